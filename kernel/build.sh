#!/usr/bin/env bash
# Builds the tierd rig kernel: Debian's linux-source-6.12 + kernel/patches/*.patch, configured
# as `make ARCH=x86_64 tinyconfig` + kernel/config.fragment.  The result is cached under
#   $TIERD_CACHE/kernels/<hash>/{bzImage,config,selftests/}
# keyed by a hash of the series, the fragment and this script, so an unchanged series costs
# seconds.  Prints the directory on stdout (logs go to stderr and build.log).
#
# Needs the packages from `scripts/install-deps.sh --kernel`.
#
#   kernel/build.sh            build (or reuse) and print the kernel directory
#   kernel/build.sh --hash     print only the cache key
#   kernel/build.sh --tree     prepare the patched source tree and print its path
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${TIERD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tierd}
src_tar=/usr/src/linux-source-6.12.tar.xz
repo=$cache/linux            # git repo of the pristine Debian tree, tag "base"
# Out-of-tree objects, kept between builds so a changed series recompiles only what it
# touches.  One tree per config (fragment + this script): switching configs, e.g. between
# checkouts or with kernel/stress.sh, then costs no full rebuild on return.
objkey=$(cat "$here/build.sh" "$here/config.fragment" | sha256sum | cut -c1-8)
obj=$cache/obj-$objkey
export CCACHE_DIR=$cache/ccache
jobs=$(nproc)
shopt -s nullglob

log() { echo "kernel/build.sh: $*" >&2; }

key() {
	{
		cat "$here/build.sh" "$here/config.fragment"
		cat /dev/null "$here"/patches/*.patch
	} | sha256sum | cut -c1-16
}

hash=$(key)
out=$cache/kernels/$hash
case "${1:-}" in
--hash) echo "$hash"; exit 0 ;;
esac
if [ "${1:-}" != "--tree" ] && [ -f "$out/bzImage" ]; then
	echo "$out"
	exit 0
fi

[ -f "$src_tar" ] || { log "$src_tar missing: run scripts/install-deps.sh --kernel"; exit 1; }
mkdir -p "$cache"
# One build at a time: the source repo and the object tree below are shared by every
# checkout (git worktrees, CI clones) that uses this cache.
exec 9>"$cache/lock"
flock 9
if [ "${1:-}" != "--tree" ] && [ -f "$out/bzImage" ]; then
	echo "$out"    # built by another run while this one waited
	exit 0
fi

# One-time: unpack and commit the pristine tree.  Debian's .gitignore ignores everything at
# the top level (for its packaging), hence add -f.
if ! git -C "$repo" rev-parse -q --verify base >/dev/null 2>&1; then
	log "unpacking $src_tar (one time)"
	rm -rf "$repo" "$repo.tmp"
	mkdir -p "$repo.tmp"
	tar -xf "$src_tar" -C "$repo.tmp" --strip-components=1
	git -C "$repo.tmp" init -q
	git -C "$repo.tmp" add -A -f
	git -C "$repo.tmp" -c user.name=tierd -c user.email=tierd@localhost \
		commit -q -m "linux-source-6.12 $(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null)"
	git -C "$repo.tmp" tag base
	mv "$repo.tmp" "$repo"
fi

# Reset to base and apply the series.  Only files the series touches change mtime, so the
# incremental build in $obj recompiles just those.
git -C "$repo" checkout -q -f --detach base
git -C "$repo" clean -q -fdx
patches=("$here"/patches/*.patch)
if [ ${#patches[@]} -gt 0 ]; then
	git -C "$repo" -c user.name=tierd -c user.email=tierd@localhost am -q --keep-cr "${patches[@]}" || {
		git -C "$repo" am --abort || true
		log "the series does not apply to linux-source-6.12"
		exit 1
	}
fi
if [ "${1:-}" = "--tree" ]; then
	echo "$repo"
	exit 0
fi

mk() { make -C "$repo" O="$obj" ARCH=x86_64 CC="ccache gcc" HOSTCC="ccache gcc" -j"$jobs" "$@"; }
mkdir -p "$obj"
buildlog=$cache/build.log
log "building $hash (log: $buildlog)"
{
	mk tinyconfig
	# Twice: some options only become visible once their dependencies are on.
	for _ in 1 2; do
		grep '^CONFIG_' "$here/config.fragment" >> "$obj/.config"
		mk olddefconfig
	done
} > "$buildlog" 2>&1 || { tail -20 "$buildlog" >&2; exit 1; }

missing=0
while IFS= read -r line; do
	grep -qx -- "$line" "$obj/.config" || { log "config: $line did not stick (dependency?)"; missing=1; }
done < <(grep '^CONFIG_' "$here/config.fragment")
[ $missing = 0 ] || exit 1

start=$(date +%s)
mk bzImage headers_install >> "$buildlog" 2>&1 || { tail -40 "$buildlog" >&2; exit 1; }
log "built in $(( $(date +%s) - start )) s"

# Selftests added by the series, built against the new UAPI headers.
tmp=$out.tmp
rm -rf "$tmp"
mkdir -p "$tmp/selftests"
for t in "$repo"/tools/testing/selftests/mm/idle_bitmap*.c; do
	gcc -O2 -Wall -I "$obj/usr/include" -I "$repo/tools/testing/selftests" \
		-o "$tmp/selftests/$(basename "$t" .c)" "$t" >> "$buildlog" 2>&1 ||
		{ tail -20 "$buildlog" >&2; exit 1; }
done
cp "$obj/arch/x86/boot/bzImage" "$tmp/bzImage"
cp "$obj/.config" "$tmp/config"
rm -rf "$out"
mv "$tmp" "$out"
echo "$out"
