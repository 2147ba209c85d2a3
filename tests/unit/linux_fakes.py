"""Shared fakes for the tierd.linux unit tests: a move_pages fake, fixture /proc + /sys trees
with a probe-able current process, and a Features object with everything available."""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np

from tierd.linux import Feature, Features

TOPO = os.path.join(os.path.dirname(__file__), "fixtures", "topology")
ADMIN_PTRACE = (1 << 21) | (1 << 19)  # CAP_SYS_ADMIN | CAP_SYS_PTRACE


class FakeSyscalls:
    def __init__(self, result=0, exc=None):
        self.result, self.exc = result, exc
        self.calls = []

    def move_pages(self, pid, addrs, nodes=None, flags=2, batch=4096):
        self.calls.append((pid, np.asarray(addrs).tolist(), nodes))
        if self.exc:
            raise self.exc
        return np.full(len(addrs), self.result, dtype=np.int32)


def make_tree(tmp_path, topo="two_tiers", caps=ADMIN_PTRACE, page_idle=True, kpageflags=True):
    root = tmp_path / "root"
    shutil.copytree(os.path.join(TOPO, topo), root)
    me = root / "proc" / str(os.getpid())
    me.mkdir(parents=True)
    (me / "status").write_text(f"Name:\tpytest\nCapEff:\t{caps:016x}\n")
    if kpageflags:
        (root / "proc" / "kpageflags").write_bytes(b"\0" * 64)
    if page_idle:
        (root / "sys/kernel/mm/page_idle").mkdir(parents=True)
        (root / "sys/kernel/mm/page_idle/bitmap").write_bytes(b"\0" * 64)
    return str(root / "proc"), str(root / "sys")


def all_available(**override) -> Features:
    kw = {f.name: Feature(f.name, True, "since", "ok") for f in dataclasses.fields(Features)
          if f.type == "Feature"}
    kw.update(override)
    return Features(**kw, nodes=(0, 1), is_root=True, cap_sys_admin=True, cap_sys_nice=True)
