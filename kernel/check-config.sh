#!/usr/bin/env bash
# Builds fs/proc (idle_bitmap.o and its neighbours) of the series under configurations the rig
# kernel does not use, with CONFIG_WERROR=y, so that a warning in a rarely built branch of
# fs/proc/idle_bitmap.c (#ifdef CONFIG_TRANSPARENT_HUGEPAGE, CONFIG_HUGETLB_PAGE,
# CONFIG_MMU_NOTIFIER) fails the check.  Not part of CI: run it after touching the #ifdefs.
#
#   kernel/check-config.sh [TREE]
#
# TREE: a kernel tree with the series applied (default: prepare the build cache's tree, as
# kernel/build.sh --tree does, and hold the build lock meanwhile).  Configurations:
#   nohuge   tinyconfig + PROC_IDLE_BITMAP, THP=n, HUGETLBFS=n, MMU_NOTIFIER=n
#   huge     tinyconfig + PROC_IDLE_BITMAP, THP=y, HUGETLBFS=y, KVM (MMU_NOTIFIER=y), KUnit test
# Prints one line per configuration; exits non-zero if any fails (log in $obj-<name>/check.log).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${TIERD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tierd}
export CCACHE_DIR=$cache/ccache
tree=${1:-}
if [ -z "$tree" ]; then
	tree=$("$here/build.sh" --tree)
	exec 9>"$cache/lock"
	flock 9    # no build resets the tree while this one compiles it
fi

base='CONFIG_64BIT=y CONFIG_PROC_FS=y CONFIG_PROC_SYSCTL=y CONFIG_PROC_PAGE_MONITOR=y
CONFIG_PROC_IDLE_BITMAP=y CONFIG_WERROR=y'
declare -A configs=(
	[nohuge]="$base # CONFIG_TRANSPARENT_HUGEPAGE is not set
# CONFIG_HUGETLBFS is not set"
	[huge]="$base CONFIG_TRANSPARENT_HUGEPAGE=y CONFIG_HUGETLBFS=y CONFIG_KUNIT=y
CONFIG_PROC_IDLE_BITMAP_KUNIT_TEST=y CONFIG_VIRTUALIZATION=y CONFIG_KVM=y CONFIG_KVM_INTEL=y"
)
# Options that must (not) end up in the final .config for the check to mean anything.
declare -A expect=(
	[nohuge]="CONFIG_PROC_IDLE_BITMAP=y CONFIG_PAGE_IDLE_FLAG=y CONFIG_WERROR=y
!CONFIG_TRANSPARENT_HUGEPAGE !CONFIG_HUGETLB_PAGE !CONFIG_MMU_NOTIFIER"
	[huge]="CONFIG_PROC_IDLE_BITMAP=y CONFIG_WERROR=y CONFIG_TRANSPARENT_HUGEPAGE=y
CONFIG_HUGETLB_PAGE=y CONFIG_MMU_NOTIFIER=y CONFIG_PROC_IDLE_BITMAP_KUNIT_TEST=y"
)

status=0
for name in nohuge huge; do
	obj=$cache/obj-$name
	log=$obj/check.log
	mkdir -p "$obj"
	mk() { make -C "$tree" O="$obj" ARCH=x86_64 CC="ccache gcc" HOSTCC="ccache gcc" -j"$(nproc)" "$@"; }
	ok=1
	{
		mk tinyconfig
		for _ in 1 2; do
			grep -o 'CONFIG_[A-Z0-9_]*=[^ ]*' <<<"${configs[$name]}" >> "$obj/.config"
			grep '^# CONFIG' <<<"${configs[$name]}" >> "$obj/.config" || true
			mk olddefconfig
		done
	} > "$log" 2>&1 || ok=0
	for opt in ${expect[$name]}; do
		case $opt in
		!*) grep -q "^${opt#!}=" "$obj/.config" && { echo "$name: ${opt#!} is set" >> "$log"; ok=0; } ;;
		*) grep -qx "$opt" "$obj/.config" || { echo "$name: $opt missing" >> "$log"; ok=0; } ;;
		esac
	done
	mk fs/proc/ >> "$log" 2>&1 || ok=0
	if [ $ok = 1 ]; then
		echo "$name: fs/proc built with -Werror, no warnings"
	else
		echo "$name: FAILED (see $log)"
		grep -E 'error:|warning:|missing$|is set$' "$log" | grep -v '^\.config:' | head -20
		status=1
	fi
done
exit $status
