#!/usr/bin/env bash
# Set up a machine for pollbench: nginx (Debian's nginx-light), Nchan (Debian's
# libnginx-mod-nchan, for --protocol nchan) and Redis (Debian's redis-server, for --state
# redis) when they are missing, and a virtualenv in .venv with the
# dependencies at the exact versions of constraints.txt (the lock).  Safe to rerun.
#   --prometheus  also install Debian's prometheus and prometheus-nginx-exporter (for
#            --prometheus; without their recommends: no node exporter)
#   --test   also install what the test suite needs (Debian's chromium for the web UI test,
#            Debian's postgresql for the results-history tests, iproute2 for the
#            several-hosts test, and what --prometheus needs)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
want_prometheus=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1; want_prometheus=1 ;;
    --prometheus) want_prometheus=1 ;;
    *) echo "bootstrap: unknown option $arg (--test, --prometheus)" >&2; exit 2 ;;
  esac
done

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
# Nchan, loaded by its absolute path (pollbench.stack.nginx_config.NCHAN_MODULE)
[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || missing+=(libnginx-mod-nchan)
if [ "$want_test" = 1 ] && ! command -v chromium >/dev/null 2>&1; then missing+=(chromium); fi
# the several-hosts test makes network namespaces with ip (iproute2)
if [ "$want_test" = 1 ] && ! command -v ip >/dev/null 2>&1 && [ ! -x /usr/sbin/ip ]; then
  missing+=(iproute2)
fi
if [ "$want_test" = 1 ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
lean=()  # installed without their recommends
if [ "$want_prometheus" = 1 ]; then
  command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ] || lean+=(prometheus)
  command -v prometheus-nginx-exporter >/dev/null 2>&1 || [ -x /usr/bin/prometheus-nginx-exporter ] \
    || lean+=(prometheus-nginx-exporter)
fi
if [ "${#missing[@]}" -gt 0 ] || [ "${#lean[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: missing ${missing[*]} ${lean[*]}; run as root or: apt-get install -y" \
      "${missing[*]} ${lean[*]}" >&2
    exit 2
  fi
  echo "bootstrap: installing ${missing[*]} ${lean[*]} (apt)"
  apt-get update -qq
  if [ "${#missing[@]}" -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if [ "${#lean[@]}" -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${lean[@]}" >/dev/null
  fi
fi
export PATH="$PATH:/usr/sbin"

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# the exact versions of the lock (constraints.txt); pyproject.toml holds ranges
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,lint,docs]' tox
echo "bootstrap: ready (nginx: $(nginx -v 2>&1 | cut -d/ -f2); redis: $(redis-server --version | cut -d' ' -f3); python: .venv/bin/python)"
