#!/usr/bin/env bash
# Installs everything tierd needs on a fresh Debian 12 machine (run as root), then the
# project's virtualenv in .venv.  Idempotent: a second run only checks.
#
#   scripts/install-deps.sh            # runtime: apt packages for systemd-python + venv
#   scripts/install-deps.sh --kernel   # also the kernel build and QEMU rig dependencies
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
kernel=0
[ "${1:-}" = "--kernel" ] && kernel=1

pkgs=(python3 python3-venv python3-dev gcc pkg-config libsystemd-dev)
if [ $kernel = 1 ]; then
	pkgs+=(build-essential flex bison bc libelf-dev libssl-dev cpio xz-utils rsync ccache
	       qemu-system-x86 linux-source-6.12 git perl)
	# tests/integration: promtool and a Prometheus server check the /metrics endpoint
	pkgs+=(prometheus)
	# the Debian package: scripts/build-deb.sh builds it; tests/vm installs it with apt in the
	# guest, whose root is this machine's, so its dependencies must be here already
	pkgs+=(dpkg-dev debhelper dh-python lintian python3-numpy python3-yaml python3-psutil
	       python3-prometheus-client python3-systemd python3-regex)
	# tests/vm (test_guest_postgres.py) and benchmarks/side_by_side.py (scenario PG) run a
	# PostgreSQL cluster of their own in the guest: the server, pgbench and the contrib
	# extensions (pg_buffercache, pg_prewarm) of Debian's package
	pkgs+=(postgresql)
fi
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "install-deps: apt-get install ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	if [[ " ${missing[*]} " == *" postgresql "* ]]; then
		# only the programs: no "main" cluster, so no server runs on this machine (the
		# rig's guests create their own cluster in a tmpfs; a PostgreSQL installed before
		# is left as it is: the guest's network and files are its own)
		mkdir -p /etc/postgresql-common/createcluster.d
		echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/tierd-rig.conf
	fi
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's own interpreter, not a pyenv shim: the QEMU guest runs this venv over 9p and
# needs a real path to a real binary.
venv="$here/.venv"
if [ ! -x "$venv/bin/python" ]; then
	/usr/bin/python3 -m venv "$venv"
fi
stamp="$venv/.installed"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
	echo "install-deps: pip install -e .[test] into $venv (log: $venv/pip.log)"
	{ "$venv/bin/pip" install --upgrade pip && "$venv/bin/pip" install -e "$here[test]"; } \
		> "$venv/pip.log" 2>&1 || { tail -30 "$venv/pip.log" >&2; exit 1; }
	touch "$stamp"
fi
