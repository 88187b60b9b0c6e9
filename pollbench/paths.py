"""Where pollbench's data files live: the one module that knows.

From a checkout (the README's two commands, ``pip install -e .``) the data is the
checkout's own ``nginx/`` and ``sweeps/`` folders and results go to its
``results/``.  From an installed wheel the same files are package data under
``pollbench/data/`` (pyproject.toml maps them there) and results go to
``./results`` of the current folder.  ``$POLLBENCH_RESULTS`` moves results in
both cases.

Code elsewhere never builds a path from ``__file__``: it asks here.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def _package_dir(name: str) -> Path:
    """A top-level package's folder, found without importing (running) the package."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ImportError(f"package {name} is not installed")
    return Path(spec.origin).resolve().parent


_PACKAGE = Path(__file__).resolve().parent
_INSTALLED_DATA = _PACKAGE / "data"

# The checkout this package runs from, or None for an installed wheel.
CHECKOUT: Path | None = None if (_INSTALLED_DATA / "nginx").is_dir() else _PACKAGE.parent
DATA = _INSTALLED_DATA if CHECKOUT is None else CHECKOUT

NGINX_DIR = DATA / "nginx"                 # nginx.conf.j2, mime.types
PROFILES_DIR = NGINX_DIR / "profiles"      # <name>.toml
TEMPLATE = NGINX_DIR / "nginx.conf.j2"
MIME_TYPES = NGINX_DIR / "mime.types"
SWEEPS_DIR = DATA / "sweeps"               # shipped sweep files
SCHEMAS_DIR = _PACKAGE / "records" / "schemas"

# The target's files nginx serves (``root`` of /static/, favicon.ico, robots.txt).
STATIC_ROOT = _package_dir("target_app")
# The load generator's files, run by ``python -m locust -f``.
LOADTESTS = _package_dir("loadtests")
LOCUSTFILE = LOADTESTS / "locustfile.py"
SHAPESFILE = LOADTESTS / "shapes.py"


def results_dir() -> Path:
    """Where run folders go by default."""
    env = os.environ.get("POLLBENCH_RESULTS")
    if env:
        return Path(env)
    return (CHECKOUT if CHECKOUT is not None else Path.cwd()) / "results"


def repository() -> Path:
    """The git checkout that ``check --baseline-ref`` exports revisions of."""
    return CHECKOUT if CHECKOUT is not None else Path.cwd()
