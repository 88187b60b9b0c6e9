#!/usr/bin/env bash
# Set up a machine for pollbench: nginx (Debian's nginx-light) when it is missing, and a
# virtualenv in .venv with the pinned dependencies from pyproject.toml.  Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: nginx is missing; run as root or install it: apt-get install -y nginx-light" >&2
    exit 2
  fi
  echo "bootstrap: installing nginx-light"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
fi
export PATH="$PATH:/usr/sbin"

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test,lint]' tox==4.67.13
echo "bootstrap: ready (nginx: $(nginx -v 2>&1 | cut -d/ -f2); python: .venv/bin/python)"
