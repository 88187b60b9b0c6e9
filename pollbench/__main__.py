import sys

from pollbench.cli import main

sys.exit(main())
