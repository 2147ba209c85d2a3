#!/usr/bin/env bash
# Installs tierd as a systemd service (run as root, from this checkout), or removes it.
#
#   scripts/install-service.sh              install: /opt/tierd (a venv with tierd from
#                                           this checkout), /usr/local/bin/tierd,
#                                           /etc/systemd/system/tierd.service, and
#                                           /etc/tierd.yaml unless one exists already
#   scripts/install-service.sh --now        ... and enable and start it
#   scripts/install-service.sh --uninstall  stop, disable and remove all that; an
#                                           /etc/tierd.yaml you edited stays
#
#   --venv DIR   use the Python environment DIR (which has tierd installed, e.g. this
#                checkout's .venv) instead of creating /opt/tierd
#   --root DIR   install under DIR instead of / (tests); no systemctl calls
#
# /etc/tierd.yaml is never overwritten: the shipped default also goes to
# /usr/local/share/tierd/tierd.yaml, to compare with after an upgrade.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=/ venv= now=0 uninstall=0
while [ $# -gt 0 ]; do
	case "$1" in
	--now) now=1 ;;
	--uninstall) uninstall=1 ;;
	--venv) venv=$(cd "$2" && pwd); shift ;;
	--root) root=$2; shift ;;
	*) echo "usage: $0 [--now] [--venv DIR] [--root DIR] | --uninstall [--root DIR]" >&2; exit 2 ;;
	esac
	shift
done
root=${root%/}
opt=$root/opt/tierd
bin=$root/usr/local/bin/tierd
unit=$root/etc/systemd/system/tierd.service
share=$root/usr/local/share/tierd
policy=$root/etc/tierd.yaml
say() { echo "install-service: $*"; }
# systemctl only on the live system, and only when systemd runs it
live() { [ -z "$root" ] && [ -d /run/systemd/system ]; }

if [ $uninstall = 1 ]; then
	if live; then
		systemctl disable --now tierd.service 2>/dev/null || true
	fi
	rm -f "$unit" "$bin"
	if [ -f "$policy" ]; then
		if [ -f "$share/tierd.yaml" ] && cmp -s "$policy" "$share/tierd.yaml"; then
			rm -f "$policy"
		else
			say "kept $policy: it differs from the shipped default (your edits)"
		fi
	fi
	rm -rf "$share"
	# only a venv this script created (the marker), never one given with --venv
	[ -f "$opt/.tierd-service" ] && rm -rf "$opt"
	if live; then systemctl daemon-reload; fi
	say "removed tierd.service"
	exit 0
fi

[ "$(id -u)" = 0 ] || [ -n "$root" ] || { echo "install-service: run as root" >&2; exit 1; }
if [ -z "$venv" ]; then
	# the build needs the compiler and libsystemd headers for systemd-python
	[ -z "$root" ] && "$here/scripts/install-deps.sh" >/dev/null
	if [ ! -x "$opt/bin/python" ]; then
		/usr/bin/python3 -m venv "$opt"
		touch "$opt/.tierd-service"
	fi
	say "pip install $here into $opt (log: $opt/pip.log)"
	"$opt/bin/pip" install --upgrade "$here" > "$opt/pip.log" 2>&1 ||
		{ tail -20 "$opt/pip.log" >&2; exit 1; }
	venv=/opt/tierd
fi
[ -x "$root$venv/bin/tierd" ] || [ -x "$venv/bin/tierd" ] ||
	{ echo "install-service: no tierd in $venv/bin" >&2; exit 1; }

install -d "$(dirname "$bin")" "$(dirname "$unit")" "$share"
ln -sfn "$venv/bin/tierd" "$bin"
install -m 0644 "$here/systemd/tierd.service" "$unit"
install -m 0644 "$here/etc/tierd.yaml" "$share/tierd.yaml"
install -m 0644 "$here/README.md" "$share/README.md"
if [ ! -e "$policy" ]; then
	install -m 0644 "$here/etc/tierd.yaml" "$policy"
	say "installed the default policy $policy: edit its targets, then systemctl reload tierd"
elif ! cmp -s "$policy" "$here/etc/tierd.yaml"; then
	say "kept your $policy (the shipped default is $share/tierd.yaml)"
fi
if live; then
	systemctl daemon-reload
	if [ $now = 1 ]; then
		systemctl enable --now tierd.service
	fi
fi
say "installed tierd.service ($bin -> $venv/bin/tierd)"
