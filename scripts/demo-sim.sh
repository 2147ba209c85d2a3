#!/usr/bin/env bash
# tierd without a VM, from a fresh Debian 12 machine (as root): installs tierd in .venv, shows
# what this machine offers (`tierd topology`), samples a live process (`tierd scan`), then
# runs the policy simulator on a zipf workload with phase changes.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh || exit 1
tierd=.venv/bin/tierd

echo "== tierd topology"
$tierd topology

echo; echo "== tierd scan of a process touching 16 of its 64 MiB"
.venv/bin/python - <<'PY' &
import mmap, time
m = mmap.mmap(-1, 64 << 20)
for i in range(0, 64 << 20, 4096):
    m[i] = 1
end = time.time() + 60
while time.time() < end:
    for i in range(0, 16 << 20, 4096):
        m[i] = 2
    time.sleep(0.05)
PY
workload=$!
sleep 1
$tierd scan --pid "$workload" --samples 4 --interval 1
echo "(tierd scan exited $?)"
kill "$workload" 2>/dev/null

echo; echo "== tierd simulate: 16 GiB process, 4 GiB fast tier, zipf, hot set moves every 20"
$tierd simulate --config etc/tierd.yaml \
	--workload "size=16GiB,fast=4GiB,dist=zipf:1.1,phase=every:20" --intervals 40
