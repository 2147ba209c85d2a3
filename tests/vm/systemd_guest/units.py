"""What the systemd-boot guest tests share: running a command, tierd.service's properties."""

from __future__ import annotations

import subprocess


def sh(*args, check=True, timeout=300, env=None) -> subprocess.CompletedProcess:
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def show(*props: str) -> dict:
    """tierd.service's properties (systemctl show)."""
    out = sh("systemctl", "show", "tierd.service", *[f"--property={p}" for p in props]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
