"""``tierd status``: what the running daemon is doing, read from its metrics endpoint.

The daemon exports everything worth showing as Prometheus metrics (tierd.integrations.metrics),
so the status command is a client of that endpoint: no second protocol, no socket of its own,
and it works for any user who can reach the (by default loopback) address.  ``parse`` turns
the exposition text into a ``Status``; ``format_status`` into the lines printed.

Whatever answers at that address is not trusted to be tierd: the fetch has a total deadline
(a server that trickles or never ends cannot hold the command), the answer a size cap, the
text goes through prometheus_client's exposition parser, and odd but legal content (NaN,
Inf, unknown or missing labels) is ignored sample by sample rather than trusted.
"""

from __future__ import annotations

import http.client
import math
import socket
import threading
import time
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass, field

from tierd.pages import PAGE_SIZE
from tierd.units import format_size

LEVELS = 16


TIMEOUT = 5.0  # seconds for the whole exchange
MAX_RESPONSE = 16 << 20  # bytes: a tierd scrape is tens of KiB, hundreds with many targets
MAX_VALUE = 2.0 ** 63  # no counter, size or timestamp of tierd's is larger


class NoDaemon(Exception):
    """Nothing (or not tierd) answers at the metrics address."""


class BadURL(ValueError):
    """The metrics URL cannot be asked (a usage error)."""


@dataclass
class Status:
    url: str
    build: dict = field(default_factory=dict)
    policy: dict = field(default_factory=dict)
    values: dict = field(default_factory=dict)  # unlabelled sample name -> value
    labelled: dict = field(default_factory=lambda: defaultdict(dict))  # name -> {labels: v}

    def get(self, name: str, default=None):
        return self.values.get(name, default)

    def by(self, name: str, *keys: str) -> dict:
        """name's samples keyed by the given label values (samples lacking one left out)."""
        out = {}
        for lv, v in self.labelled[name].items():
            d = dict(lv)
            if all(k in d for k in keys):
                out[tuple(d[k] for k in keys)] = v
        return out


def split_url(url: str) -> tuple[str, int, str]:
    """(host, port, path) of an http:// URL, or BadURL."""
    try:
        u = urllib.parse.urlsplit(url)
        port = u.port or 80
    except ValueError as e:
        raise BadURL(f"bad URL {url!r}: {e}") from None
    if u.scheme != "http" or not u.hostname:
        raise BadURL(f"bad URL {url!r}: expected http://HOST:PORT/metrics")
    return u.hostname, port, (u.path or "/") + (f"?{u.query}" if u.query else "")


def fetch(url: str, timeout: float | None = None, limit: int | None = None) -> str:
    """The body of GET ``url``, within ``timeout`` seconds in all (TIMEOUT) and ``limit``
    bytes (MAX_RESPONSE), or NoDaemon saying why not (BadURL if the URL itself is wrong)."""
    timeout = TIMEOUT if timeout is None else timeout
    limit = MAX_RESPONSE if limit is None else limit
    host, port, path = split_url(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    box: dict = {}

    def get() -> None:
        try:
            conn.request("GET", path, headers={"Accept": "text/plain"})
            r = conn.getresponse()
            if r.status != 200:
                box["error"] = NoDaemon(f"{url} answers HTTP {r.status} {_one_line(r.reason)}: "
                                        "not a tierd metrics endpoint")
                return
            body = b""
            while chunk := r.read(65536):
                body += chunk
                if len(body) > limit:
                    box["error"] = NoDaemon(f"{url} sent more than {format_size(limit)}: not "
                                            "tierd's metrics")
                    return
            box["body"] = body
        except (OSError, http.client.HTTPException, ValueError) as e:
            why = getattr(e, "strerror", None) or _one_line(e)
            box["error"] = NoDaemon(f"no tierd answers at {url} ({why}): is the daemon running? "
                                    "(systemctl status tierd)")

    worker = threading.Thread(target=get, name="tierd-status-fetch", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():  # trickling or endless: cut it off
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        raise NoDaemon(f"{url} did not answer within {timeout:g}s: is it tierd?")
    conn.close()
    if "error" in box:
        raise box["error"]
    return box["body"].decode("utf-8", errors="replace")


def parse(text: str, url: str) -> Status:
    from prometheus_client.parser import text_string_to_metric_families

    st = Status(url)
    try:
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if not math.isfinite(s.value) or abs(s.value) > MAX_VALUE:  # legal, but no
                    continue  # count, size or time of tierd's
                if s.labels:
                    st.labelled[s.name][tuple(sorted(s.labels.items()))] = s.value
                else:
                    st.values[s.name] = s.value
    except Exception as e:  # the parser's errors on garbage are ValueError, IndexError ...
        raise NoDaemon(f"{url} does not serve Prometheus metrics: {_one_line(e)}") from None
    builds = list(st.labelled.get("tierd_build_info", {}))
    if not builds:
        raise NoDaemon(f"{url} answers, but it is not tierd (no tierd_build_info)")
    st.build = dict(builds[0])
    pol = list(st.labelled.get("tierd_policy_info", {}))
    st.policy = dict(pol[0]) if pol else {}
    return st


def _pages(n: float) -> str:
    return f"{int(n)} ({format_size(int(n) * PAGE_SIZE)})"


def _one_line(e: object) -> str:
    """What a server or parser said, as one line of at most 200 characters."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    try:
        return time.strftime("%H:%M:%S", time.localtime(ts)) + f" ({max(0, now - ts):.0f}s ago)"
    except (OverflowError, OSError, ValueError):  # a timestamp no clock shows
        return f"an impossible time ({ts:g})"


def classes(hist: list[float], hot: int, cold: int) -> tuple[float, float, float]:
    """(hot, warm, cold) pages of a 16-level histogram: hot at or above the hot threshold,
    cold below the cold one (the demotion candidates) or not accessed in the whole window
    (hotness 0), warm between."""
    cold = max(1, min(cold, hot))
    return sum(hist[hot:]), sum(hist[cold:hot]), sum(hist[:cold])


def format_status(st: Status, now: float | None = None) -> list[str]:
    now = time.time() if now is None else now
    b, p = st.build, st.policy
    out = [f"tierd {b.get('version', '?')} on Linux {b.get('kernel', '?')}, tracking "
           f"{b.get('tracking', '?')}, metrics at {st.url}"]
    if p:
        keys = [k for k in p if k not in ("file", "targets")]
        out.append(f"policy {p.get('file', '?')} (targets: {p.get('targets') or 'none'}):")
        line = "  "
        for k in keys:
            item = f"{k}={p[k]}  "
            if len(line) + len(item) > 100:
                out.append(line.rstrip())
                line = "  "
            line += item
        out.append(line.rstrip())
    reloads = st.by("tierd_policy_reloads_total", "result")
    ok, bad = reloads.get(("success",), 0), reloads.get(("failure",), 0)
    if ok or bad:
        last = st.get("tierd_policy_last_reload_timestamp_seconds")
        verdict = "applied" if st.get("tierd_policy_last_reload_success") else \
            "REFUSED, the previous policy stays (the reason is in the log: journalctl -u tierd)"
        out.append(f"  reloads: {int(ok)} applied, {int(bad)} refused; the last, at "
                   f"{_ago(last, now)}, was {verdict}")

    n = int(st.get("tierd_intervals_total", 0))
    if n == 0:
        out.append("no interval completed yet")
    else:
        out.append(f"interval #{n} started {_ago(st.get('tierd_last_interval_timestamp_seconds'), now)}, "
                   f"took {st.get('tierd_interval_duration_seconds', 0):.2f}s "
                   f"(every {st.get('tierd_interval_target_seconds', 0):g}s)")
    out.append(f"processes: {int(st.get('tierd_processes', 0))} in "
               f"{int(st.get('tierd_targets', 0))} target(s); "
               f"{format_size(int(st.get('tierd_state_bytes', 0)))} of page state")
    unmatched = int(st.get("tierd_targets_unmatched", 0))
    if unmatched:
        every = unmatched == int(st.get("tierd_targets", 0))
        out.append(f"WARNING: {'the policy matches no process: ' if every else ''}{unmatched} "
                   "target(s) matched no process for 12 intervals or more; check their "
                   "selectors (tierd check-config; the log names them)")

    mem = st.by("tierd_node_memory_free_bytes", "node", "tier")
    total = st.by("tierd_node_memory_total_bytes", "node", "tier")
    recl = st.by("tierd_node_memory_reclaimable_bytes", "node", "tier")
    if mem:
        out.append("memory: " + "; ".join(
            f"node {node} ({tier}) {format_size(int(free))} free"
            + (f" + {format_size(int(recl[(node, tier)]))} page cache"
               if recl.get((node, tier)) else "")
            + f" of {format_size(int(total.get((node, tier), 0)))}"
            for (node, tier), free in sorted(mem.items())))
    needs = {k: v for k, v in st.by("tierd_target_fast_need_bytes", "target", "share").items()
             if v == v}  # NaN: no estimate yet
    for t in sorted({t for t, _ in needs}):
        out.append(f"fast memory needed by target {t}: " + ", ".join(
            f"{format_size(int(needs[(t, sh)]))} for {pct} of its accesses"
            for sh, pct in (("0.9", "90%"), ("0.95", "95%"), ("0.99", "99%")) if (t, sh) in needs))
    waiting = st.by("tierd_target_hot_waiting_bytes", "target")
    for (t,), v in sorted(waiting.items()):
        if v:
            out.append(f"WAITING: target {t}: {format_size(int(v))} of hot pages wait on slow "
                       "memory, the fast tier has no room (see the log)")

    pages = st.by("tierd_pages", "target", "node", "hotness")
    procs = st.by("tierd_target_processes", "target")
    hot_t = st.by("tierd_target_hot_threshold", "target")
    cold_t = st.by("tierd_target_cold_threshold", "target")
    hists: dict = defaultdict(lambda: [0.0] * LEVELS)
    for (target, node, level), v in pages.items():
        if level.isascii() and level.isdigit() and int(level) < LEVELS:  # other labels: not tierd's, ignored
            hists[(target, node)][int(level)] += v
    targets = sorted({t for t, _ in hists} | {t for (t,) in procs})
    if targets:
        rows = [("target", "procs", "hot>=", "node", "hot", "warm", "cold")]
        for t in targets:
            ht = int(hot_t.get((t,), LEVELS))
            ct = int(cold_t.get((t,), LEVELS))
            nodes = sorted((nd for tt, nd in hists if tt == t), key=lambda x: (x == "unknown", x))
            first = True
            for nd in nodes:
                h, w, c = classes(hists[(t, nd)], ht, ct)
                if not (h or w or c):
                    continue
                rows.append((t if first else "", str(int(procs.get((t,), 0))) if first else "",
                             ("-" if ht >= LEVELS else str(ht)) if first else "", nd,
                             format_size(int(h) * PAGE_SIZE), format_size(int(w) * PAGE_SIZE),
                             format_size(int(c) * PAGE_SIZE)))
                first = False
            if first:
                rows.append((t, str(int(procs.get((t,), 0))), "-", "-", "-", "-", "-"))
        out.append("pages by target and node (hot: at or above the target's hotness threshold; "
                   "cold: demotable or idle):")
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            out.append("  " + "  ".join(c.rjust(w) if i >= 4 else c.ljust(w)
                                        for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    else:
        out.append("no target process found yet")

    moved = st.by("tierd_interval_pages_moved", "direction")
    out.append(f"migrations: last interval promoted {_pages(moved.get(('promote',), 0))}, demoted "
               f"{_pages(moved.get(('demote',), 0))}; since start promoted "
               f"{_pages(st.get('tierd_pages_promoted_total', 0))}, demoted "
               f"{_pages(st.get('tierd_pages_demoted_total', 0))}, "
               f"{format_size(int(st.get('tierd_migrated_bytes_total', 0)))} copied")
    fails = {k[0]: v for k, v in st.by("tierd_move_pages_failures_total", "status").items() if v}
    exited = int(st.get("tierd_exited_processes_total", 0))
    errs = ", ".join(f"{k} {int(v)}" for k, v in sorted(fails.items()))
    out.append(f"errors: move_pages failures {errs or 'none'}; processes exited while "
               f"managed: {exited}")
    return out
