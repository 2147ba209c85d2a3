"""A daemon on the fake kernel with the metrics observer and a real /metrics endpoint:
shared by tests/unit (content of the scrape) and tests/integration (promtool, Prometheus)."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from engine_fakes import FakeKernel, FakeProc

from tierd.engine.daemon import Daemon, Engine
from tierd.engine.targets import ProcessRef, StaticResolver
from tierd.integrations.metrics import MetricsObserver, MetricsServer, make_registry
from tierd.policy import Policy, TargetSpec

PID = 4242
HOT = 10  # pages of the first mapping accessed in every interval


@dataclass
class Scenario:
    kernel: FakeKernel
    proc: FakeProc
    daemon: Daemon
    metrics: MetricsObserver
    server: MetricsServer

    @property
    def url(self) -> str:
        host, port = self.server.address
        return f"http://{host}:{port}/metrics"

    def scrape(self) -> str:
        with urllib.request.urlopen(self.url, timeout=10) as r:
            return r.read().decode()

    def interval(self):
        self.proc.next_access |= {self.proc.vpn(i) for i in range(HOT)}
        return self.daemon.tick()

    def close(self) -> None:
        self.server.close()
        self.daemon.engine.close()


def policy(**kw) -> Policy:
    base = dict(source="<test>", interval=1.0, interval_auto=False,
                targets=(TargetSpec(name="app", pids=(PID,)),),
                rate=1 << 30, batch=4 << 20, retry_after=4, metrics_listen="127.0.0.1:0")
    base.update(kw)
    return Policy(**base)


def start(pol: Policy | None = None, loader=None, intervals: int = 3) -> Scenario:
    """Ready, then ``intervals`` intervals in which the first HOT pages are accessed."""
    k = FakeKernel()
    proc = k.add(FakeProc(PID, 128, node=1))
    pol = pol or policy()
    eng = Engine(k, pol, resolver=StaticResolver([ProcessRef(PID, 0.0, "app")]),
                 clock=lambda: 0.0)
    metrics = MetricsObserver(kernel_release="6.12.0-test")
    server = MetricsServer(make_registry(lambda: metrics.snapshot))
    server.start(pol)
    d = Daemon(eng, observers=[metrics, server], loader=loader)
    d._notify("on_ready", eng)
    s = Scenario(k, proc, d, metrics, server)
    for _ in range(intervals):
        s.interval()
    return s
