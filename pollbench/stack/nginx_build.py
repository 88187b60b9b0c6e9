"""``pollbench nginx build``: an nginx with the poll and select event methods, from Debian's source.

Debian's nginx is built with epoll only (``use poll;`` is refused), so comparing
nginx's event methods needs another build.  This one comes from Debian's own
source package (the same upstream release as the installed nginx) and leaves
the system alone: the deb-src list, the package lists and the download live in
a private folder, ``apt-get`` is pointed at them with ``-o`` options, and the
result is installed into the cache folder::

    ~/.cache/pollbench/nginx-<version>-poll-select/sbin/nginx

(``$POLLBENCH_CACHE`` moves the cache).  A finished build is reused: profiles,
sweeps and tests name it ``nginx_binary = "built"`` / ``--nginx built`` and
never rebuild it.  Build tools and headers (gcc, make, libpcre2-dev,
zlib1g-dev) are installed with apt when missing and running as root.

    path = ensure_built()          # builds once, then returns the cached binary
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from pollbench.errors import UserError

BUILT = "built"  # the name profiles, sweeps and --nginx use for the cached build
CONFIGURE_OPTIONS = ["--with-poll_module", "--with-select_module",
                     "--with-http_stub_status_module", "--with-threads"]
BUILD_PACKAGES = {"gcc": "gcc", "make": "make"}
BUILD_HEADERS = {"/usr/include/pcre2.h": "libpcre2-dev", "/usr/include/zlib.h": "zlib1g-dev",
                 "/usr/include/stdio.h": "libc6-dev"}
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
_VERSION = re.compile(r"nginx/(\d+\.\d+\.\d+)")


def cache_dir() -> Path:
    return Path(os.environ.get("POLLBENCH_CACHE") or Path.home() / ".cache" / "pollbench")


def system_nginx_version(binary: str = "nginx") -> str:
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin")
    if path is None:
        raise UserError("nginx is not installed: `apt-get install -y nginx-light` first (the "
                        "build uses the source package of the installed version)")
    out = subprocess.run([path, "-v"], capture_output=True, text=True).stderr
    m = _VERSION.search(out)
    if not m:
        raise UserError(f"cannot read the version of {path} from `nginx -v`: {out.strip()!r}")
    return m.group(1)


def build_dir(version: str | None = None) -> Path:
    return cache_dir() / f"nginx-{version or system_nginx_version()}-poll-select"


def built_binary(version: str | None = None) -> Path:
    return build_dir(version) / "sbin" / "nginx"


def find_built() -> Path | None:
    """The cached build's binary, or None when it was never built."""
    try:
        path = built_binary()
    except UserError:
        candidates = sorted(cache_dir().glob("nginx-*-poll-select/sbin/nginx"))
        return candidates[-1] if candidates else None
    return path if path.is_file() and os.access(path, os.X_OK) else None


def resolve_binary(name: str) -> str:
    """``built`` -> the cached build (refused with what to run when missing); else as given."""
    if name != BUILT:
        return name
    path = find_built()
    if path is None:
        raise UserError("nginx_binary \"built\" is not built yet: run `pollbench nginx build` "
                        "(about a minute, once; it is cached)")
    return str(path)


def _run(cmd: list[str], log, cwd: Path | None = None, env: dict | None = None) -> None:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.run(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise UserError(f"`{' '.join(cmd[:4])} ...` failed with exit {proc.returncode}; "
                        f"see {log.name}")


def _install_build_deps(log) -> None:
    missing = [pkg for tool, pkg in BUILD_PACKAGES.items() if shutil.which(tool) is None]
    missing += [pkg for header, pkg in BUILD_HEADERS.items() if not Path(header).exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        raise UserError(f"building nginx needs {', '.join(missing)}: run as root, or first "
                        f"`apt-get install -y {' '.join(missing)}`")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print(f"installing build dependencies: {' '.join(missing)}", flush=True)
    _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], log, env=env)


def _deb_src_stanza() -> str:
    """The Debian main archive entry of the system's sources, turned into a deb-src entry."""
    if not DEBIAN_SOURCES.is_file():
        raise UserError(f"{DEBIAN_SOURCES} is missing: this build needs Debian's apt sources")
    for stanza in DEBIAN_SOURCES.read_text().split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
        if fields.get("URIs", "").rstrip("/").endswith("/debian") and "Suites" in fields:
            suite = fields["Suites"].split()[0]
            return (f"Types: deb-src\nURIs: {fields['URIs']}\nSuites: {suite}\n"
                    f"Components: {fields.get('Components', 'main')}\n"
                    + (f"Signed-By: {fields['Signed-By']}\n" if "Signed-By" in fields else ""))
    raise UserError(f"no Debian main archive entry in {DEBIAN_SOURCES}")


def _download_source(work: Path, version: str, log) -> Path:
    src_parts = work / "sources.d"
    lists = work / "lists"
    (lists / "partial").mkdir(parents=True)
    src_parts.mkdir()
    (src_parts / "debian-src.sources").write_text(_deb_src_stanza())
    opts = ["-o", "Dir::Etc::SourceList=/dev/null", "-o", f"Dir::Etc::SourceParts={src_parts}",
            "-o", f"Dir::State::Lists={lists}", "-o", "APT::Sandbox::User=root"]
    _run(["apt-get", *opts, "-q", "update"], log)
    download = work / "download"
    download.mkdir()
    _run(["apt-get", *opts, "-q", "source", "--download-only", "nginx"], log,
         cwd=download)
    tarballs = sorted(download.glob(f"nginx_{version}.orig.tar.*"))
    if not tarballs:
        found = ", ".join(p.name for p in download.iterdir())
        raise UserError(f"Debian's source package holds {found or 'nothing'}, not nginx "
                        f"{version} (the installed version); see {log.name}")
    with tarfile.open(tarballs[0]) as tar:
        tar.extractall(work / "src", filter="data")
    return work / "src" / f"nginx-{version}"


def build(force: bool = False, quiet: bool = False) -> Path:
    """Build (or reuse) the nginx with poll and select; return its binary."""
    version = system_nginx_version()
    dest = build_dir(version)
    binary = built_binary(version)
    if binary.is_file() and not force:
        if not quiet:
            print(f"already built (cached): {binary}")
        return binary
    if shutil.which("apt-get") is None:
        raise UserError("apt-get is missing: the build uses Debian's source package")
    cache_dir().mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="nginx-build-", dir=cache_dir()))
    log_path = cache_dir() / f"nginx-{version}-build.log"
    staging = dest.with_name(dest.name + ".partial")
    try:
        with open(log_path, "w") as log:
            _install_build_deps(log)
            if not quiet:
                print(f"downloading Debian's source of nginx {version} (private apt lists)",
                      flush=True)
            tree = _download_source(work, version, log)
            if not quiet:
                print(f"building with {' '.join(CONFIGURE_OPTIONS)}", flush=True)
            shutil.rmtree(staging, ignore_errors=True)
            _run(["./configure", f"--prefix={staging}", *CONFIGURE_OPTIONS], log, cwd=tree)
            _run(["make", f"-j{os.cpu_count() or 1}"], log, cwd=tree)
            _run(["make", "install"], log, cwd=tree)
        # nginx compiles its prefix in; -p at run time overrides it, so moving is safe.
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
    if not quiet:
        print(f"built in {time.monotonic() - started:.0f} s: {binary} (log: {log_path})")
    return binary


def ensure_built() -> Path:
    return find_built() or build(quiet=True)


def event_methods(binary: str) -> set[str]:
    """Which of epoll/poll/select this nginx accepts, by asking it (``nginx -t``)."""
    return {m for m in ("epoll", "poll", "select") if supports(binary, m)}


_SUPPORT_CACHE: dict[tuple[str, float, str], bool] = {}


def supports(binary: str, method: str) -> bool:
    path = shutil.which(binary) or binary
    try:
        key = (path, os.stat(path).st_mtime, method)
    except OSError:
        return False
    if key not in _SUPPORT_CACHE:
        with tempfile.TemporaryDirectory(prefix="pollbench-nginx-probe-") as tmp:
            conf = Path(tmp) / "probe.conf"
            conf.write_text(f"pid {tmp}/nginx.pid;\nerror_log {tmp}/error.log;\n"
                            f"events {{ use {method}; }}\n")
            proc = subprocess.run([path, "-p", tmp, "-c", str(conf), "-t"],
                                  capture_output=True, text=True)
            _SUPPORT_CACHE[key] = proc.returncode == 0
    return _SUPPORT_CACHE[key]
