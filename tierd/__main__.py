"""Allows ``python -m tierd``."""

from tierd.cli import main

raise SystemExit(main())
