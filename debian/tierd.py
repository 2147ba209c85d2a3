#!/usr/bin/python3
"""tierd's command line (the Debian package's entry point; pip installs its own)."""

import sys

from tierd.cli import main

sys.exit(main())
