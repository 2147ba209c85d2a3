#!/usr/bin/env bash
# Builds the Debian package tierd_VERSION_all.deb from this checkout (Debian 12, as root for
# the apt step) and checks it with lintian.
#
#   scripts/build-deb.sh [OUTDIR]     default OUTDIR: dist/
#
# Installs the build dependencies through apt (debhelper, dh-python, lintian) if missing,
# builds in a temporary copy (dpkg-buildpackage writes next to the source tree), and fails if
# lintian reports an error or a warning.  Prints the .deb's path last.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$here/dist}" && cd "${1:-$here/dist}" && pwd)

pkgs=(dpkg-dev debhelper dh-python python3 lintian)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "build-deb: apt-get install ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

version=$(dpkg-parsechangelog -l "$here/debian/changelog" -S Version)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
src=$tmp/tierd-$version
mkdir "$src"
# what the package is built from (debian/rules): no venv, no caches, no git
cp -r "$here/debian" "$here/tierd" "$here/systemd" "$here/etc" "$here/README.md" "$src/"
find "$src" -name __pycache__ -prune -exec rm -rf {} +
(cd "$src" && dpkg-buildpackage -b -us -uc) > "$tmp/build.log" 2>&1 ||
	{ tail -40 "$tmp/build.log" >&2; echo "build-deb: dpkg-buildpackage failed" >&2; exit 1; }
deb=$tmp/tierd_${version}_all.deb
rc=0
lintian --fail-on error,warning --tag-display-limit 0 "$deb" > "$tmp/lintian.log" 2>&1 || rc=$?
grep -v '^running with root privileges' "$tmp/lintian.log" >&2 || true
[ $rc = 0 ] || { echo "build-deb: lintian found errors or warnings (above)" >&2; exit 1; }
cp "$deb" "$out/"
echo "$out/tierd_${version}_all.deb"
