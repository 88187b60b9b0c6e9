"""pollbench: start a long-poll target behind nginx, load it with Locust, record and compare.

The CLI entry point is :func:`pollbench.cli.main` (``pollbench --help``).
"""

__version__ = "0.1.0"
