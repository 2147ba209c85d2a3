"""Prometheus metrics: the loop publishes a snapshot once per interval, a collector reads it.

``MetricsObserver`` turns each interval's ``IntervalStats`` into an immutable ``Snapshot``
(running totals included) and publishes it by replacing one attribute, so a scrape, served
on the HTTP server's own thread, sees either the previous interval or this one, whole,
without a lock and without ever waiting for the loop.  ``TierdCollector`` renders the latest
snapshot; ``MetricsServer`` serves a registry holding it on the policy's ``metrics.listen``
and re-binds on a reload that changes the address (binding first, so a bad address refuses
the reload and the old endpoint keeps serving); it serves with tierd.integrations.http, whose
connections are bounded in number, time and size (any local user can reach the port).

Names follow the Prometheus conventions: ``tierd_`` prefix, base units (bytes, seconds),
``_total`` counters, ``_info`` for labels-only metrics.  Everything exported is listed in
``METRICS`` (name -> help); tests check the scrape against it and contrib/grafana/ against
the scrape.

Cardinality is bounded whatever the policy and the host (README "Metrics"): no series per
process (no pid label: processes come and go, and a series per pid grows without end); per
target, the series of at most ``detail_targets(nodes)`` targets, those with the most resident
pages, so that tierd_pages (16 hotness levels per target and node) stays within
PAGES_SERIES_MAX, and the other targets summed into one, target="(other)"; every label value
at most LABEL_MAX bytes (a longer one is cut and keeps a short hash, so two long names stay
two series).  A scrape with 1,000 targets is about 1,200 series (tests/unit/test_metrics_bounds.py).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tierd import __version__
from tierd.engine.daemon import NO_MATCH_INTERVALS, Observer
from tierd.engine.hotness import LEVELS
from tierd.engine.placement import NO_THRESHOLD, UNKNOWN
from tierd.pages import PAGE_SIZE

FAILURE_STATUSES = ("busy", "absent", "nomem", "denied", "other")
LABEL_MAX = 200  # bytes in one label value
PAGES_SERIES_MAX = 1024  # tierd_pages series at most (targets x node rows x 16 levels)
OTHER = "(other)"  # the target label of the targets summed together

# name (as scraped, without the _total/_info suffix rules applied twice) -> help text
METRICS = {
    "tierd_build_info": "tierd version, access-tracking interface in use and kernel release",
    "tierd_policy_info": "the policy in force: file and effective values",
    "tierd_policy_reloads_total": "policy reloads (SIGHUP) by result",
    "tierd_policy_last_reload_timestamp_seconds": "time of the last reload attempt",
    "tierd_policy_last_reload_success": "1 if the last reload was applied, 0 if refused",
    "tierd_targets": "targets in the policy",
    "tierd_processes": "processes managed",
    "tierd_target_processes": "processes managed per target",
    "tierd_pages": "resident pages per target, node and hotness level (0 cold .. 15 hot); "
                   "node=\"unknown\": not yet located",
    "tierd_target_hot_pages": "pages at or above the target's hot threshold, per tier",
    "tierd_target_hot_threshold": "hotness at or above which a target's pages belong on "
                                  "the fast tier (16: none)",
    "tierd_target_cold_threshold": "hotness below which a target's fast pages may be demoted",
    "tierd_tracked_pages": "pages of address space tracked",
    "tierd_state_bytes": "memory used for per-page state",
    "tierd_shared_pages": "present pages of targets' MAP_SHARED objects (shm, memfd, shared files), "
                          "counted once however many processes map them; state=unmovable: not "
                          "moved, moving them needs CAP_SYS_NICE (MPOL_MF_MOVE_ALL)",
    "tierd_node_memory_total_bytes": "MemTotal per memory node",
    "tierd_node_memory_free_bytes": "MemFree per memory node",
    "tierd_node_memory_reclaimable_bytes": "clean page cache per memory node (Active(file) + "
                                           "Inactive(file) - Dirty - Writeback): room a "
                                           "promotion gets by reclaim",
    "tierd_target_fast_need_bytes": "fast memory that would serve a share (0.9, 0.95, 0.99) of "
                                    "a target's accesses (a miss-ratio curve, from a power-law "
                                    "fit of its hotness histogram, else from the measured "
                                    "access rates)",
    "tierd_target_hot_waiting_bytes": "hot pages of a target left on slow memory because the "
                                      "fast tier had no room",
    "tierd_intervals_total": "intervals completed",
    "tierd_interval_duration_seconds": "wall time of the last interval's work",
    "tierd_interval_target_seconds": "the policy's interval",
    "tierd_last_interval_timestamp_seconds": "when the last interval started",
    "tierd_interval_pages_moved": "pages moved in the last interval, by direction",
    "tierd_pages_promoted_total": "pages moved to fast nodes",
    "tierd_pages_demoted_total": "pages moved to slow nodes",
    "tierd_pages_queried_total": "pages whose node was queried with move_pages",
    "tierd_migrated_bytes_total": "bytes migrated (promotions and demotions)",
    "tierd_move_pages_calls_total": "move_pages(2) calls, moves and queries",
    "tierd_move_pages_failures_total": "pages move_pages did not move, by status",
    "tierd_sampled_pages_total": "pages of address space sampled for accesses",
    "tierd_sampling_seconds_total": "time reading maps and access bits (kernel work)",
    "tierd_engine_seconds_total": "time in hotness, placement and selection (tierd's work)",
    "tierd_move_seconds_total": "time inside move_pages",
    "tierd_exited_processes_total": "managed processes that exited or stopped matching",
    "tierd_targets_unmatched": "targets that have matched no process for "
                               "NO_MATCH_INTERVALS (12) intervals in a row or more",
    "tierd_targets_detailed": "targets with series of their own; the others are summed in "
                              "target=\"(other)\"",
}


@dataclass(frozen=True)
class TargetSnap:
    processes: int
    hot: int
    cold: int
    by_node: dict  # node id (UNKNOWN = -1) -> tuple of LEVELS page counts
    hot_fast: int
    hot_slow: int
    waiting: int = 0  # pages (TargetStats.waiting)
    need: tuple | None = None  # pages for 90/95/99% of the accesses (TargetStats.need)


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape shows; never mutated after publication."""

    build: dict
    policy: dict  # label -> value
    reloads: dict = field(default_factory=lambda: {"success": 0, "failure": 0})
    last_reload: float | None = None
    last_reload_ok: bool | None = None
    targets: dict = field(default_factory=dict)  # name -> TargetSnap
    memory: dict = field(default_factory=dict)  # node -> (total, free, tier)
    reclaimable: dict = field(default_factory=dict)  # node -> (bytes, tier)
    totals: dict = field(default_factory=dict)  # counter name -> value
    failures: dict = field(default_factory=dict)  # status -> pages
    intervals: int = 0
    last_started: float | None = None
    last_seconds: float = 0.0
    last_promoted: int = 0
    last_demoted: int = 0
    processes: int = 0
    tracked_pages: int = 0
    state_bytes: int = 0
    shared_pages: int = 0
    shared_unmovable: int = 0
    interval: float = 0.0
    configured_targets: int = 0
    unmatched: int = 0  # targets without a process for NO_MATCH_INTERVALS intervals or more
    detailed: int = 0  # targets with series of their own (the rest: OTHER)


def cap_label(value: str, limit: int = LABEL_MAX) -> str:
    """``value`` cut to at most ``limit`` bytes of UTF-8; a cut value ends with "~" and 8 hex
    digits of its hash, so different long values stay different."""
    raw = value.encode()
    if len(raw) <= limit:
        return value
    head = raw[: limit - 9].decode(errors="ignore")
    return f"{head}~{hashlib.sha1(raw).hexdigest()[:8]}"


def name_list(names, limit: int = LABEL_MAX) -> str:
    """Comma-separated names within ``limit`` bytes: as many as fit, then "(+N more)"."""
    names = list(names)
    text = ",".join(names)
    if len(text.encode()) <= limit:
        return text
    out: list[str] = []
    for i, n in enumerate(names):
        if len(",".join(out + [n, f"(+{len(names) - i - 1} more)"]).encode()) > limit:
            return cap_label(",".join(out + [f"(+{len(names) - i} more)"]), limit)
        out.append(n)
    return cap_label(text, limit)  # not reached: the whole list would have fit


def policy_labels(policy) -> dict:
    """The policy's effective values as label pairs (tierd_policy_info), targets excluded
    (they are tierd_target_* labels, and only their names, as many as fit, here)."""
    out = {"file": cap_label(policy.source)}
    for k, v in policy.summary().items():
        if not k.startswith("targets["):
            out[k.replace(".", "_")] = cap_label(v)
    out["targets"] = name_list(t.name for t in policy.targets)
    return out


def detail_targets(node_rows: int) -> int:
    """Targets that get series of their own when ``node_rows`` nodes (with "unknown") are
    shown: tierd_pages within PAGES_SERIES_MAX, counting OTHER."""
    return max(1, PAGES_SERIES_MAX // (LEVELS * max(1, node_rows)) - 1)


def bounded_targets(targets: dict, pages: dict, node_rows: int) -> dict:
    """``targets`` (name -> TargetSnap) as exported: the ``detail_targets`` with the most
    resident ``pages`` (name -> pages) under their own (capped) names, the rest summed into
    OTHER (thresholds: none, a sum has no threshold)."""
    top = detail_targets(node_rows)
    if len(targets) <= top + 1:
        return {cap_label(n): t for n, t in targets.items()}
    order = sorted(targets, key=lambda n: (-pages.get(n, 0), n))
    out = {cap_label(n): targets[n] for n in order[:top]}
    rest = [targets[n] for n in order[top:]]
    by_node: dict = {}
    for t in rest:
        for nid, h in t.by_node.items():
            acc = by_node.get(nid)
            by_node[nid] = h if acc is None else tuple(a + b for a, b in zip(acc, h))
    out[OTHER] = TargetSnap(sum(t.processes for t in rest), NO_THRESHOLD, NO_THRESHOLD, by_node,
                            sum(t.hot_fast for t in rest), sum(t.hot_slow for t in rest),
                            sum(t.waiting for t in rest))  # need: per target only (not additive)
    return out


def _node(nid: int) -> str:
    return "unknown" if nid == UNKNOWN else str(nid)


class MetricsObserver(Observer):
    """Builds and publishes the snapshot (loop thread only); ``snapshot`` is read by scrapes."""

    def __init__(self, engine=None, *, kernel_release: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.kernel_release = kernel_release or os.uname().release
        self.clock = clock
        self.engine = engine
        self.snapshot: Snapshot | None = None
        self._totals = dict.fromkeys(
            ("promoted", "demoted", "queried", "migrated_bytes", "calls", "sampled_pages",
             "sampling_seconds", "engine_seconds", "move_seconds", "exited"), 0)
        self._failures = dict.fromkeys(FAILURE_STATUSES, 0)
        self._reloads = {"success": 0, "failure": 0}
        if engine is not None:  # build info and policy from the first scrape on
            self._publish()

    def _publish(self, **changes) -> None:
        base = self.snapshot
        values = {} if base is None else dict(base.__dict__)
        values["build"] = {"version": __version__, "tracking": self.engine.reader.name,
                           "kernel": self.kernel_release}
        values["policy"] = policy_labels(self.engine.policy)
        values["interval"] = float(self.engine.policy.interval)
        values["configured_targets"] = len(self.engine.policy.targets)
        values["reloads"] = dict(self._reloads)
        values["totals"] = dict(self._totals)
        values["failures"] = dict(self._failures)
        values.update(changes)
        self.snapshot = Snapshot(**values)  # one reference swap: the publication

    def on_ready(self, engine) -> None:
        self.engine = engine
        self._publish()

    def on_interval(self, stats) -> None:
        t = self._totals
        t["promoted"] += stats.promoted
        t["demoted"] += stats.demoted
        t["queried"] += stats.queries.queried
        t["migrated_bytes"] += stats.moves.moved * PAGE_SIZE
        t["calls"] += stats.moves.calls + stats.queries.calls
        t["sampled_pages"] += stats.tracked_pages
        t["sampling_seconds"] += stats.sample_seconds
        t["engine_seconds"] += stats.engine_seconds
        t["move_seconds"] += stats.move_seconds
        t["exited"] += stats.dropped
        for s in FAILURE_STATUSES:
            self._failures[s] += getattr(stats.moves, s)
        fast = set(stats.fast)
        targets = {}
        unmatched = 0
        for name, ts in stats.targets.items():
            unmatched += ts.unmatched_intervals >= NO_MATCH_INTERVALS
            by_node = {nid: tuple(int(x) for x in h) for nid, h in ts.by_node.items()}
            hot_fast = hot_slow = 0
            if ts.hot < NO_THRESHOLD:
                for nid, h in by_node.items():
                    n = sum(h[ts.hot:])
                    if nid in fast:
                        hot_fast += n
                    elif nid != UNKNOWN:
                        hot_slow += n
            targets[name] = TargetSnap(ts.processes, ts.hot, ts.cold, by_node, hot_fast, hot_slow,
                                       ts.waiting, ts.need)
        memory = {nid: (tot, free, "fast" if nid in fast else "slow" if nid in stats.slow else "none")
                  for nid, (tot, free) in stats.memory.items()}
        reclaimable = {nid: (b, memory[nid][2]) for nid, b in stats.reclaimable.items()
                       if nid in memory}
        targets = bounded_targets(targets, {n: ts.pages for n, ts in stats.targets.items()},
                                  len(stats.nodes) or len(memory) + 1)
        self._publish(
            targets=targets, memory=memory, reclaimable=reclaimable, unmatched=unmatched,
            detailed=len(targets) - (OTHER in targets),
            intervals=(self.snapshot.intervals if self.snapshot else 0) + 1,
            last_started=stats.started, last_seconds=stats.seconds,
            last_promoted=stats.promoted, last_demoted=stats.demoted,
            processes=stats.processes, tracked_pages=stats.tracked_pages,
            state_bytes=stats.state_bytes, shared_pages=stats.shared_pages,
            shared_unmovable=stats.shared_unmovable)

    def on_reloaded(self, policy, error) -> None:
        self._reloads["failure" if error else "success"] += 1
        if self.engine is not None:
            self._publish(last_reload=self.clock(), last_reload_ok=error is None)


class TierdCollector:
    """prometheus_client collector over the latest published snapshot."""

    def __init__(self, source: Callable[[], Snapshot | None]) -> None:
        self.source = source

    def describe(self):
        return []  # names are dynamic per snapshot; nothing to check at registration

    def collect(self):
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        s = self.source()  # read once: the whole scrape is one snapshot
        if s is None:
            return

        def gauge(name, labels=(), rows=None, value=None):
            m = GaugeMetricFamily(name, METRICS[name], labels=list(labels) or None,
                                  value=value if not labels else None)
            for lv, v in rows or ():
                m.add_metric(list(lv), v)
            return m

        def counter(name, labels=(), rows=None, value=None):
            base = name.removesuffix("_total")
            m = CounterMetricFamily(base, METRICS[name], labels=list(labels) or None,
                                    value=value if not labels else None)
            for lv, v in rows or ():
                m.add_metric(list(lv), v)
            return m

        info = InfoMetricFamily("tierd_build", METRICS["tierd_build_info"])
        info.add_metric([], s.build)
        yield info
        info = InfoMetricFamily("tierd_policy", METRICS["tierd_policy_info"])
        info.add_metric([], s.policy)
        yield info
        yield counter("tierd_policy_reloads_total", ("result",),
                      [((k,), v) for k, v in sorted(s.reloads.items())])
        if s.last_reload is not None:
            yield gauge("tierd_policy_last_reload_timestamp_seconds", value=s.last_reload)
            yield gauge("tierd_policy_last_reload_success", value=float(s.last_reload_ok))
        yield gauge("tierd_targets", value=s.configured_targets)
        yield gauge("tierd_processes", value=s.processes)
        yield gauge("tierd_target_processes", ("target",),
                    [((n, ), t.processes) for n, t in sorted(s.targets.items())])
        pages = []
        for name, t in sorted(s.targets.items()):
            for nid, h in sorted(t.by_node.items()):
                pages += [((name, _node(nid), str(lv)), h[lv]) for lv in range(LEVELS)]
        yield gauge("tierd_pages", ("target", "node", "hotness"), pages)
        yield gauge("tierd_target_hot_pages", ("target", "tier"),
                    [((n, tier), v) for n, t in sorted(s.targets.items())
                     for tier, v in (("fast", t.hot_fast), ("slow", t.hot_slow))])
        yield gauge("tierd_target_hot_threshold", ("target",),
                    [((n,), t.hot) for n, t in sorted(s.targets.items()) if n != OTHER])
        yield gauge("tierd_target_cold_threshold", ("target",),
                    [((n,), t.cold) for n, t in sorted(s.targets.items()) if n != OTHER])
        yield gauge("tierd_targets_unmatched", value=s.unmatched)
        yield gauge("tierd_targets_detailed", value=s.detailed)
        yield gauge("tierd_tracked_pages", value=s.tracked_pages)
        yield gauge("tierd_state_bytes", value=s.state_bytes)
        yield gauge("tierd_shared_pages", ("state",), [(("tracked",), s.shared_pages),
                                                       (("unmovable",), s.shared_unmovable)])
        mem = sorted(s.memory.items())
        yield gauge("tierd_node_memory_total_bytes", ("node", "tier"),
                    [((str(n), tier), tot) for n, (tot, free, tier) in mem])
        yield gauge("tierd_node_memory_free_bytes", ("node", "tier"),
                    [((str(n), tier), free) for n, (tot, free, tier) in mem])
        yield gauge("tierd_node_memory_reclaimable_bytes", ("node", "tier"),
                    [((str(n), tier), b) for n, (b, tier) in sorted(s.reclaimable.items())])
        yield gauge("tierd_target_fast_need_bytes", ("target", "share"),  # NaN: no estimate yet
                    [((n, share), k * PAGE_SIZE if t.need else float("nan"))
                     for n, t in sorted(s.targets.items())
                     for share, k in zip(("0.9", "0.95", "0.99"), t.need or (0, 0, 0))])
        yield gauge("tierd_target_hot_waiting_bytes", ("target",),
                    [((n,), t.waiting * PAGE_SIZE) for n, t in sorted(s.targets.items())])
        yield counter("tierd_intervals_total", value=s.intervals)
        yield gauge("tierd_interval_target_seconds", value=s.interval)
        if s.last_started is not None:
            yield gauge("tierd_interval_duration_seconds", value=s.last_seconds)
            yield gauge("tierd_last_interval_timestamp_seconds", value=s.last_started)
            yield gauge("tierd_interval_pages_moved", ("direction",),
                        [(("promote",), s.last_promoted), (("demote",), s.last_demoted)])
        t = s.totals
        yield counter("tierd_pages_promoted_total", value=t["promoted"])
        yield counter("tierd_pages_demoted_total", value=t["demoted"])
        yield counter("tierd_pages_queried_total", value=t["queried"])
        yield counter("tierd_migrated_bytes_total", value=t["migrated_bytes"])
        yield counter("tierd_move_pages_calls_total", value=t["calls"])
        yield counter("tierd_move_pages_failures_total", ("status",),
                      [((k,), v) for k, v in sorted(s.failures.items())])
        yield counter("tierd_sampled_pages_total", value=t["sampled_pages"])
        yield counter("tierd_sampling_seconds_total", value=t["sampling_seconds"])
        yield counter("tierd_engine_seconds_total", value=t["engine_seconds"])
        yield counter("tierd_move_seconds_total", value=t["move_seconds"])
        yield counter("tierd_exited_processes_total", value=t["exited"])


def start_http_server(port: int, addr: str, registry):
    """prometheus_client.start_http_server, which returns (server, thread) only since 0.17:
    Debian 12's python3-prometheus-client is 0.16 (the .deb's dependency).  The same server
    (prometheus_client's WSGI app and threading server) on the address's own family."""
    import socket
    import threading
    from wsgiref.simple_server import make_server

    from prometheus_client import make_wsgi_app
    from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET

    httpd = make_server(addr, port, make_wsgi_app(registry), Server, handler_class=_SilentHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    return httpd, thread


def split_listen(listen: str) -> tuple[str, int]:
    """"HOST:PORT" / "[V6]:PORT" (validated by the policy loader) -> (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsServer(Observer):
    """The /metrics HTTP endpoint for one registry, bound to the policy's metrics.listen.

    ``prepare(policy)`` binds a new address if the policy changes it (raising
    ``PolicyError`` naming metrics.listen and its line if it cannot); ``on_reloaded``
    then switches to it, or drops it when the reload failed; ``on_stopping`` closes."""

    def __init__(self, registry) -> None:
        self.registry = registry
        self.listen = ""
        self.server = None
        self._pending = None  # (listen, server) bound by prepare, not yet switched to

    def _bind(self, policy):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from tierd.integrations.http import BoundedHTTPServer
        from tierd.policy import PolicyError

        listen = policy.metrics_listen
        if not listen:
            return None
        host, port = split_listen(listen)
        try:
            server = BoundedHTTPServer(
                host, port, lambda: (CONTENT_TYPE_LATEST, generate_latest(self.registry)))
        except (OSError, OverflowError, UnicodeError, ValueError) as e:  # Unicode: IDNA
            raise PolicyError(policy.source, key_line(policy.source, ("metrics", "listen")),
                              "metrics.listen",
                              f"cannot listen on {listen}: {getattr(e, 'strerror', None) or e}") from None
        return server

    def start(self, policy) -> None:
        self.server = self._bind(policy)
        self.listen = policy.metrics_listen

    @property
    def address(self) -> tuple[str, int] | None:
        """Where it really listens (port 0 in the policy: the port the kernel chose)."""
        if self.server is None:
            return None
        return self.server.server_address[:2]

    def prepare(self, policy) -> None:
        self._drop_pending()
        if policy.metrics_listen != self.listen:
            self._pending = (policy.metrics_listen, self._bind(policy))

    def _drop_pending(self) -> None:
        if self._pending is not None:
            _close(self._pending[1])
            self._pending = None

    def on_reloaded(self, policy, error) -> None:
        if error is not None or self._pending is None:
            self._drop_pending()
            return
        old = self.server
        self.listen, self.server = self._pending
        self._pending = None
        _close(old)

    def on_stopping(self) -> None:
        self.close()

    def close(self) -> None:
        self._drop_pending()
        _close(self.server)
        self.server = None


def _close(server) -> None:
    if server is not None:
        server.close()


def key_line(source: str, path: tuple[str, ...]) -> int | None:
    """The line of a key in a YAML file (for errors found after validation), or None."""
    import yaml

    from tierd.policy import PolicyError, read_policy_text

    try:
        node = yaml.compose(read_policy_text(source), Loader=yaml.SafeLoader)
    except (PolicyError, yaml.YAMLError, RecursionError):
        return None
    for key in path:
        if not isinstance(node, yaml.MappingNode):
            return None
        for k, v in node.value:
            if k.value == key:
                line, node = k.start_mark.line + 1, v
                break
        else:
            return None
    return line


def make_registry(source: Callable[[], Snapshot | None]):
    """A fresh registry (no process-wide default) with tierd's collector and the process
    collector (process_cpu_seconds_total, process_resident_memory_bytes ...)."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(TierdCollector(source))
    ProcessCollector(registry=registry)
    return registry
