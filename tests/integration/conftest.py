"""tests/integration: no root, no VM, but real outside programs (promtool, prometheus,
systemd-analyze from the Debian packages scripts/install-deps.sh installs) against tierd's
real endpoints and files.  The fake kernel of tests/unit drives the daemon."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
