#!/usr/bin/env bash
# tierd's main job, live, from a fresh Debian 12 machine (as root): installs what it needs
# (scripts/install-deps.sh --kernel), builds the rig kernel the first time (about 5 minutes,
# with a progress line; cached in ~/.cache/tierd) or reuses it, boots the QEMU two-tier rig,
# starts two programs whose memory (1 GiB) is twice the fast node's and starts on the slow
# node, runs `tierd run` with the shipped etc/tierd.yaml plus a target selector, and prints,
# per tierd interval, where the programs' hot pages really are (their own list of hot pages,
# placed with move_pages queries), what tierd moved, the fast node's free memory and tierd's
# CPU; then a plain-language summary.  Takes ~3-5 minutes after the kernel exists.
# Options go to `python -m workloads.demo` (--intervals N, --tracking page_idle).
# Without a VM: scripts/demo-sim.sh (tierd topology, scan of a local process, simulate).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --kernel
exec .venv/bin/python -m workloads.demo "$@"
