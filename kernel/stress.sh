#!/usr/bin/env bash
# Stress run of the idle_bitmap series on a debug kernel: lockdep, DEBUG_VM, KASAN.
#
#   kernel/stress.sh [--build-only] [MINUTES]   (default 10; needs install-deps.sh --kernel)
#   kernel/stress.sh --check RESULT_DIR         (the verdict on a run's kernel log again)
#
# TIERD_STRESS_TREE=DIR builds from a tree of your own with the series applied instead of
# the build cache's (then the build does not hold kernel/build.sh's lock).
#
# Builds the rig kernel (tinyconfig + config.fragment) plus the debug options below in its own
# object directory ($cache/obj-stress, cached in $cache/kernels-stress/<hash>), boots it in the
# rig and, for MINUTES, runs at the same time:
#   - the idle_bitmap selftest in a loop (its cases fail when the other clearing readers below
#     clear its bits: counted, not fatal);
#   - clearing IDLE_BITMAP_SCANs (1 GiB per call, resumed at walk_end) and reads of every
#     mapping that /proc/PID/maps lists for each running selftest and churn process
#     (kernel/stress_guest.py scan), which races them against munmap, mprotect, THP splits,
#     hugetlb faults, fork, exec and exit;
#   - a churn process (stress_guest.py churn): THP faults, splits and collapses
#     (MADV_COLLAPSE), mremap, fork/exit, move_pages between the two nodes;
#   - page_idle bitmap readers (stress_guest.py page_idle);
#   - memory compaction every second (THP migration under the walks).
# Passes when the kernel log has no BUG, WARNING, lockdep or KASAN report and the guest is
# still alive at the end.  Prints a summary; the log is in $cache/stress/.
# Heavy: ~20 min to build from scratch on 2 cores, then MINUTES in QEMU.  Run it with nice.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo_root=$(cd "$here/.." && pwd)
cache=${TIERD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tierd}
build_only=0
if [ "${1:-}" = --build-only ]; then build_only=1; shift; fi

# The verdict on a result directory's kernel log.  Reports: BUG, WARNING, lockdep, KASAN, and
# any Call Trace except warn_alloc()'s: "page allocation failure" is the churn's move_pages
# to a full node 0 (__GFP_THISNODE, and KASAN's shadow takes a third of node 0), the page
# allocator's warning for an allocation allowed to fail, counted and printed apart.
check() {
	local dmesg=$1/dmesg.txt
	[ -f "$dmesg" ] || { echo "stress: no kernel log in $1"; return 1; }
	read -r reports allocfail < <(awk '
		/page allocation failure/ { alloc = 1 }
		/BUG:|WARNING:|possible .*lock|KASAN/ { n++ }
		/Call Trace/ { if (alloc) a++; else n++; alloc = 0 }
		END { print n + 0, a + 0 }' "$dmesg")
	echo "stress: kernel log reports (BUG/WARNING/lockdep/KASAN/Call Trace): $reports;" \
		"page allocation failures (warn_alloc, not counted): $allocfail"
	[ "$reports" = 0 ]
}
if [ "${1:-}" = --check ]; then check "$2"; exit; fi
minutes=${1:-10}
export CCACHE_DIR=$cache/ccache
debug='CONFIG_DEBUG_KERNEL=y CONFIG_PROVE_LOCKING=y CONFIG_DEBUG_ATOMIC_SLEEP=y
CONFIG_DEBUG_VM=y CONFIG_DEBUG_VM_PGFLAGS=y CONFIG_KASAN=y CONFIG_KASAN_GENERIC=y
CONFIG_KASAN_INLINE=y CONFIG_STACKTRACE=y CONFIG_PANIC_ON_OOPS=n CONFIG_SLUB_TINY=n'

# the kernel's inputs: the series and rig config, the debug options, the build recipe below
hash=$({ "$here/build.sh" --hash; echo "$debug"; sed -n '/^# -- build$/,/^# -- build end$/p' "$0"; } |
	sha256sum | cut -c1-16)
out=$cache/kernels-stress/$hash
# -- build
if [ ! -f "$out/bzImage" ]; then
	tree=${TIERD_STRESS_TREE:-}
	if [ -z "$tree" ]; then
		tree=$("$here/build.sh" --tree)
		exec 9>"$cache/lock"
		flock 9    # no other build resets the tree meanwhile
	fi
	obj=$cache/obj-stress
	mkdir -p "$obj" "$out.tmp/selftests"
	mk() { make -C "$tree" O="$obj" ARCH=x86_64 CC="ccache gcc" HOSTCC="ccache gcc" -j"$(nproc)" "$@"; }
	log=$obj/build.log
	{
		mk tinyconfig
		for _ in 1 2; do
			grep '^CONFIG_' "$here/config.fragment" >> "$obj/.config"
			grep -o 'CONFIG_[A-Z0-9_]*=[^ ]*' <<<"$debug" >> "$obj/.config"
			mk olddefconfig
		done
		for opt in CONFIG_PROVE_LOCKING=y CONFIG_DEBUG_VM=y CONFIG_KASAN=y CONFIG_PROC_IDLE_BITMAP=y; do
			grep -qx "$opt" "$obj/.config" || { echo "stress: $opt did not stick"; exit 1; }
		done
		mk bzImage headers_install
		gcc -O2 -Wall -I "$obj/usr/include" -I "$tree/tools/testing/selftests" \
			-o "$out.tmp/selftests/idle_bitmap" "$tree/tools/testing/selftests/mm/idle_bitmap.c"
	} > "$log" 2>&1 || { tail -30 "$log" >&2; exit 1; }
	cp "$obj/arch/x86/boot/bzImage" "$obj/.config" "$out.tmp/"
	rm -rf "$out"
	mv "$out.tmp" "$out"
	[ -n "${TIERD_STRESS_TREE:-}" ] || flock -u 9
fi
# -- build end
[ $build_only = 0 ] || { echo "$out"; exit 0; }

res=$cache/stress/$(date +%Y%m%d-%H%M%S)
mkdir -p "$res"
cat > "$res/guest.sh" <<GUEST
set -u
st=$out/selftests/idle_bitmap
end=\$(( \$(date +%s) + $minutes * 60 ))
echo 32 > /proc/sys/vm/nr_hugepages
( while [ \$(date +%s) -lt \$end ]; do echo 1 > /proc/sys/vm/compact_memory; sleep 1; done ) &
py="$repo_root/.venv/bin/python $here/stress_guest.py"
secs=\$(( $minutes * 60 ))
\$py scan \$secs & \$py churn \$secs & \$py page_idle \$secs &
runs=0; failed=0
while [ \$(date +%s) -lt \$end ]; do
	"\$st" > /mnt/out/last.tap 2>&1 || failed=\$((failed + 1))
	runs=\$((runs + 1))
done
wait
echo "selftest runs: \$runs, with failed cases: \$failed"
dmesg > /mnt/out/dmesg.txt
GUEST
start=$(date +%s)
set +e
nice "$repo_root/.venv/bin/python" -m tierd.vmrig --kernel "$out" --out "$res" \
	--timeout $(( minutes * 60 + 900 )) -- sh "$res/guest.sh" > "$res/output.txt" 2>&1
rc=$?
set -e
echo "stress: $minutes min, kernel $out, rc $rc, $(( $(date +%s) - start )) s wall"
grep 'selftest runs' "$res/output.txt" || true
check "$res" && [ "$rc" = 0 ]
