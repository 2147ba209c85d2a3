#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (as root): installs the dependencies
# (apt, the venv, linux-source-6.12, QEMU), builds or reuses the rig kernel, then runs
#   tests/unit  (no root, no VM)   tests/host  (this machine's kernel, as root)
#   tests/vm    (QEMU on the patched kernel: kselftest + guest tests)
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --kernel
kernel=$(kernel/build.sh)
echo "test.sh: rig kernel $kernel"
# pytest exits 5 when it collected no test: that fails here too (set -e).
exec .venv/bin/python -m pytest "${@:-tests}"
