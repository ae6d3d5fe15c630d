#!/usr/bin/env bash
# The multi-host bed by hand (root): network namespaces as hosts, fresh PostgreSQL, Redis and
# S3 on a "svc" host, API + scheduler on "api", two workers, all on links it creates.
# usage: ops/dev/netbed.sh up     (runs until Ctrl-C, then tears everything down)
#        ops/dev/netbed.sh down   (removes what a crashed run left: fm<slot>-* only)
# FARM_TEST_SLOT picks the addresses (10.77.<slot>.0/24) and names (fm<slot>-*).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
PYTHONPATH="$root" exec "$root/.venv/bin/python" -m tests.multihost.netbed "${1:-up}"
