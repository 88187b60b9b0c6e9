import sys

from target_app.server import main

sys.exit(main())
