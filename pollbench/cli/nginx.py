"""``pollbench nginx build`` / ``which``: an nginx with the poll and select event methods, built
from Debian's source into the cache once (:mod:`pollbench.stack.nginx_build` does the work)."""

from __future__ import annotations

from analysis.catalog import EXIT_OK
from pollbench.errors import UserError
from pollbench.stack import nginx_build


def add_parser(sub) -> None:
    p = sub.add_parser("nginx", help="nginx helpers: build one with poll and select",
                       description=nginx_build.__doc__)
    nsub = p.add_subparsers(dest="nginx_command", required=True, metavar="ACTION")
    b = nsub.add_parser("build", help="build nginx with --with-poll_module --with-select_module "
                        "from Debian's source package into the cache (once)")
    b.add_argument("--force", action="store_true", help="rebuild even when cached")
    b.set_defaults(func=lambda a: _build_cmd(a.force))
    w = nsub.add_parser("which", help="print the cached build's path and its event methods")
    w.set_defaults(func=lambda a: _which_cmd())


def _build_cmd(force: bool) -> int:
    binary = nginx_build.build(force=force)
    print(f"event methods: {', '.join(sorted(nginx_build.event_methods(str(binary))))}")
    print('use it with --nginx built, or nginx_binary = "built" in a profile or sweep')
    return EXIT_OK


def _which_cmd() -> int:
    path = nginx_build.find_built()
    if path is None:
        raise UserError("no nginx is built yet: run `pollbench nginx build`")
    print(path)
    print(f"event methods: {', '.join(sorted(nginx_build.event_methods(str(path))))}")
    return EXIT_OK
