"""Versions: pyproject.toml holds compatible ranges (an installed pollbench must live beside
other packages on a load host), constraints.txt locks the exact versions CI and
scripts/bootstrap.sh install, and the two agree."""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from pollbench.tests.conftest import REPO


def requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return reqs


def lock() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            [spec] = list(req.specifier)
            assert spec.operator == "==", f"constraints.txt: {line} is not an exact pin"
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def test_the_metadata_holds_ranges_and_the_lock_pins_each_within_its_range():
    pins = lock()
    for req in requirements():
        name = canonicalize_name(req.name)
        assert not any(s.operator in ("==", "===") for s in req.specifier), \
            f"pyproject.toml pins {req} exactly: give a compatible range, pin in constraints.txt"
        if req.specifier:  # the lint tools may go unbounded; the lock pins them all
            assert req.specifier.contains(pins[name], prereleases=True), \
                f"constraints.txt's {name}=={pins[name]} is outside pyproject.toml's {req}"
        assert name in pins, f"{name} is not locked in constraints.txt"


def test_what_is_installed_here_is_the_lock():
    """CI installs the lock: what runs the tests is exactly what constraints.txt says."""
    wrong = []
    for name, pinned in lock().items():
        try:
            have = Version(version(name))
        except PackageNotFoundError:
            continue  # tox, say, lives outside the test environment
        if have != pinned:
            wrong.append(f"{name} {have} (lock: {pinned})")
    assert wrong == []
