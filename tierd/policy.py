"""The policy: schema (frozen dataclasses) and the YAML loader that validates all of it.

The operator's documentation of every key is etc/tierd.yaml; the schema is docs/design.md
("Policy schema").  The loader composes the YAML into a node tree (``yaml.compose``, safe
tags only), so every value keeps its line; it then walks the tree against the schema and
builds the whole ``Policy`` or raises ``PolicyError(source, line, key, message)``, whose
string is "FILE:LINE: KEY: message" with KEY the dotted path (``targets[1].min_rss``, list
indices from 0).  Nothing half-applies: a caller either gets a complete, validated, immutable
Policy or the first error.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

import yaml

from tierd.units import (
    Amount,
    UnitError,
    format_duration,
    format_size,
    parse_amount,
    parse_duration,
    parse_fraction,
    parse_rate,
    parse_size,
)

__all__ = [
    "Amount", "Policy", "PolicyError", "Regex", "TargetSpec", "load_policy", "parse_policy",
    "TRACKING_CHOICES",
]

TRACKING_CHOICES = ("auto", "idle_bitmap", "page_idle")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
HOTNESS_MAX = 15  # hotness is 0..15 (docs/design.md)
WINDOW_MAX = 16  # at most 16 samples of history
PAGE_SIZE = 4096
MAX_BYTES = 1 << 60  # sizes and rates: more does not exist in one machine (1024PiB)
MAX_BATCH = 1 << 30  # migration.batch: one move_pages call's page list stays small
FRACTION_STEP = 1e-4  # percentages: 0.01% steps
MIN_INTERVAL = 0.001  # 1ms: durations are whole milliseconds


class PolicyError(ValueError):
    """An invalid policy: str is "FILE:LINE: KEY: message" (parts that are unknown left out)."""

    def __init__(self, source: str, line: int | None, key: str | None, message: str) -> None:
        super().__init__(source, line, key, message)
        self.source = source
        self.line = line
        self.key = key
        self.message = message

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class RegexTimeout(Exception):
    """A bounded match gave up (python3-regex engine only): the text does not match."""


@dataclass(frozen=True)
class Regex:
    """A selector's regular expression.  Any local user chooses their processes' command
    lines, and a backtracking engine (Python's re) takes exponential time on patterns like
    ``(a+)+$``: 12 s for one lookup of 26 a's and a "!".

    With google-re2 installed (pip) the match is RE2's, in time linear in the text; RE2 has
    no backreferences or lookaround and such a pattern is refused.  Debian 12 packages no
    Python binding of RE2, so the Debian package matches with python3-regex (mrab-regex)
    instead, which checks a time bound while it backtracks: a match that takes longer than
    ``MATCH_TIMEOUT`` raises RegexTimeout and counts as no match (the resolver says so once
    and does not try that process again)."""

    MATCH_TIMEOUT = 0.02  # s; mrab-regex checks it every few thousand steps (~0.2 s worst seen)

    pattern: str
    compiled: object = field(compare=False, repr=False)
    bounded: bool = field(default=False, compare=False)  # True: python3-regex with a time bound

    @classmethod
    def compile(cls, pattern: str) -> Regex:
        """Raises ValueError (with the engine's reason) if ``pattern`` does not compile."""
        try:
            import re2
        except ImportError:
            return cls._compile_bounded(pattern)
        opts = re2.Options()
        opts.log_errors = False  # the reason is in the exception; RE2 would print to stderr
        try:
            return cls(pattern, re2.compile(pattern, opts))
        except re2.error as e:
            why = e.args[0] if e.args else e
            raise ValueError(why.decode(errors="replace") if isinstance(why, bytes) else str(why)) from None

    @classmethod
    def _compile_bounded(cls, pattern: str) -> Regex:
        import regex

        try:
            return cls(pattern, regex.compile(pattern), bounded=True)
        except (regex.error, OverflowError, RecursionError) as e:
            raise ValueError(str(e)) from None

    def search(self, text: str):
        """The first match or None; RegexTimeout when a bounded match gave up."""
        if self.bounded:
            try:
                return self.compiled.search(text, timeout=self.MATCH_TIMEOUT)
            except TimeoutError:
                raise RegexTimeout(f"matching {self.pattern!r} took over "
                                   f"{self.MATCH_TIMEOUT * 1000:.0f} ms") from None
        try:
            return self.compiled.search(text)
        except UnicodeEncodeError:  # undecodable bytes of a command line (surrogate escapes)
            return self.compiled.search(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))


@dataclass(frozen=True)
class TargetSpec:
    """Which processes one target covers and its share of the fast tier.

    A process matches if it satisfies every selector given (pids, comm, exe, cmdline, cgroup)
    and has at least ``min_rss`` bytes resident.
    """

    name: str
    pids: tuple[int, ...] = ()
    comm: Regex | None = None  # search on /proc/PID/comm
    exe: Regex | None = None  # search on the resolved /proc/PID/exe
    cmdline: Regex | None = None  # search on the NUL->space joined cmdline
    cgroup: str | None = None  # cgroup v2 path; the subtree below it matches too
    min_rss: int = 0
    fast_share: Amount | None = None  # guaranteed part of the fast tier
    fast_cap: Amount | None = None  # at most this much of the fast tier


@dataclass(frozen=True)
class Policy:
    """A complete, validated policy (defaults as documented in etc/tierd.yaml)."""

    source: str = "<defaults>"
    interval: float = 5.0  # fixed interval, or with interval_auto the longest one
    interval_auto: bool = True  # interval: auto (tierd/engine/interval.py)
    interval_min: float = 1.0  # auto_interval.min
    cpu_budget: float = 0.10  # auto_interval.cpu, fraction of one CPU
    tracking: str = "auto"
    targets: tuple[TargetSpec, ...] = ()
    fast_nodes: tuple[int, ...] | None = None  # None = auto (Topology.classify)
    slow_nodes: tuple[int, ...] | None = None
    keep_free: Amount = field(default=Amount(fraction=0.10))
    demote_below: Amount = field(default=Amount(fraction=0.05))
    window: int = 8
    min_hot: int = 1
    min_gain: float = 0.05  # hotness.min_gain (replaced hotness.hysteresis)
    rate: int = 128 << 20
    query_rate: int = 64 << 30  # migration.query_rate: address space per second to learn nodes of
    batch: int = 4 << 20
    retry_after: int = 4
    metrics_listen: str = "127.0.0.1:9464"
    huge_split: bool = True  # huge_pages.split: auto (True) | off (tierd/engine/huge.py)
    huge_dense: float = 0.5  # huge_pages.dense: a probe this hot is kept whole
    log_level: str = "INFO"  # log_level: the daemon's logging threshold

    def target(self, name: str) -> TargetSpec:
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(name)

    def summary(self) -> dict[str, str]:
        """Human-readable effective values, key path -> value (for `tierd check-config`)."""
        auto = "auto"
        out = {
            "interval": ("auto" if self.interval_auto else format_duration(self.interval)),
            "tracking": self.tracking,
            "nodes.fast": auto if self.fast_nodes is None else ",".join(map(str, self.fast_nodes)),
            "nodes.slow": auto if self.slow_nodes is None else ",".join(map(str, self.slow_nodes)),
            "fast_tier.keep_free": str(self.keep_free),
            "fast_tier.demote_below": str(self.demote_below),
            "hotness.window": str(self.window),
            "hotness.min_hot": str(self.min_hot),
            "hotness.min_gain": f"{self.min_gain * 100:g}%",
            "migration.rate": format_size(self.rate) + "/s",
            "migration.query_rate": format_size(self.query_rate) + "/s",
            "migration.batch": format_size(self.batch),
            "migration.retry_after": f"{self.retry_after} intervals",
            "metrics.listen": self.metrics_listen or "(disabled)",
            "huge_pages.split": "auto" if self.huge_split else "off",
            "huge_pages.dense": f"{self.huge_dense * 100:g}%",
            "log_level": self.log_level,
        }
        if self.interval_auto:
            out["auto_interval.min"] = format_duration(self.interval_min)
            out["auto_interval.max"] = format_duration(self.interval)
            out["auto_interval.cpu"] = f"{self.cpu_budget * 100:g}%"
        for i, t in enumerate(self.targets):
            sel = [f"pids={list(t.pids)}"] if t.pids else []
            sel += [f"{k}=/{getattr(t, k).pattern}/" for k in ("comm", "exe", "cmdline") if getattr(t, k)]
            sel += [f"cgroup={t.cgroup}"] if t.cgroup else []
            extra = [f"min_rss={format_size(t.min_rss)}"] if t.min_rss else []
            extra += [f"fast_share={t.fast_share}"] if t.fast_share else []
            extra += [f"fast_cap={t.fast_cap}"] if t.fast_cap else []
            out[f"targets[{i}]"] = f"{t.name}: " + " ".join(sel + extra)
        return out


# ---------------------------------------------------------------------------------------------
# Loader


class _Walker:
    """Validates a composed YAML node tree against the schema."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.constructor = yaml.constructor.SafeConstructor()

    # -- errors and scalars ------------------------------------------------------------------
    def fail(self, node: yaml.Node, key: str, message: str):
        raise PolicyError(self.source, node.start_mark.line + 1, key, message)

    def value(self, node: yaml.Node, key: str):
        """A scalar's Python value (YAML 1.1 safe types); lists and maps are refused."""
        if isinstance(node, yaml.MappingNode):
            self.fail(node, key, "expected a single value, got a mapping")
        if isinstance(node, yaml.SequenceNode):
            self.fail(node, key, "expected a single value, got a list")
        try:
            return self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:
            self.fail(node, key, f"unreadable value {node.value!r}: {e}")

    def unit(self, node: yaml.Node, key: str, parse: Callable, what: str):
        """A size, rate, percentage or duration, within what tierd can work with: sizes and
        rates up to MAX_BYTES, percentages 0% or 0.01% .. 100% in steps of 0.01% (so that
        every value accepted is printed back as written, never as "1e-07%")."""
        v = self.value(node, key)
        if v is None:
            self.fail(node, key, f"needs a {what}")
        try:
            out = parse(v)
        except UnitError as e:
            self.fail(node, key, str(e))
        size = out.bytes if isinstance(out, Amount) else out if parse in (parse_size, parse_rate) else None
        if size is not None and size > MAX_BYTES:
            self.fail(node, key, f"{v!r} is more than {format_size(MAX_BYTES)}"
                      f"{'/s' if parse is parse_rate else ''}")
        frac = out.fraction if isinstance(out, Amount) else out if parse is parse_fraction else None
        if frac and (frac < FRACTION_STEP or abs(frac / FRACTION_STEP - round(frac / FRACTION_STEP)) > 1e-6):
            self.fail(node, key, f"{v!r}: a percentage is 0% or 0.01% .. 100%, with at most two "
                      "decimals")
        return out

    def string(self, node: yaml.Node, key: str) -> str:
        v = self.value(node, key)
        if not isinstance(v, str):
            self.fail(node, key, f"expected a string, got {_typename(v)} (quote it)")
        return v

    def integer(self, node: yaml.Node, key: str, lo: int, hi: int | None = None) -> int:
        v = self.value(node, key)
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(node, key, f"expected a whole number, got {_typename(v)}")
        if v < lo or (hi is not None and v > hi):
            rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            self.fail(node, key, f"{v} is out of range ({rng})")
        return v

    def regex(self, node: yaml.Node, key: str) -> Regex:
        text = self.string(node, key)
        try:
            return Regex.compile(text)
        except ValueError as e:
            self.fail(node, key, f"bad regular expression {text!r}: {e} (RE2 syntax: no "
                      "backreferences or lookaround)")

    def mapping(self, node: yaml.Node, prefix: str, allowed: tuple[str, ...]) -> dict:
        """{key: (key node, value node)}; unknown and repeated keys are errors."""
        where = prefix or "policy"
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, where, f"expected a mapping of keys ({', '.join(allowed)})")
        out: dict = {}
        for knode, vnode in node.value:
            k = self.value(knode, where + ".<key>" if prefix else "<key>")
            path = f"{prefix}.{k}" if prefix else str(k)
            if not isinstance(k, str):
                self.fail(knode, path, "keys must be names")
            if k not in allowed:
                close = difflib.get_close_matches(k, allowed, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                self.fail(knode, path, f"unknown key ({hint}known: {', '.join(allowed)})")
            if k in out:
                self.fail(knode, path, f"given twice (first on line {out[k][0].start_mark.line + 1})")
            out[k] = (knode, vnode)
        return out

    def sequence(self, node: yaml.Node, key: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, key, "expected a list")
        return list(node.value)

    def node_list(self, node: yaml.Node, key: str) -> tuple[int, ...] | None:
        """"auto"/empty -> None; a list of node ids, one id, or a kernel list "0,2-3"."""
        if isinstance(node, yaml.SequenceNode):
            ids = [self.integer(n, f"{key}[{i}]", 0, 4095) for i, n in enumerate(node.value)]
            if not ids:
                self.fail(node, key, "empty list (write auto, or leave the key out)")
            if len(set(ids)) != len(ids):
                self.fail(node, key, "a node is listed twice")
            return tuple(sorted(ids))
        v = self.value(node, key)
        if v is None or v == "auto":
            return None
        if isinstance(v, int) and not isinstance(v, bool):
            return (self.integer(node, key, 0, 4095),)
        if isinstance(v, str):
            from tierd.linux.sysfs import parse_nodelist  # pure parser, no file access

            try:
                ids = parse_nodelist(v)
            except ValueError:
                ids = ()
            if ids and max(ids) <= 4095:
                return ids
        self.fail(node, key, f"expected auto or a list of node ids, got {v!r}")

    # -- the schema ----------------------------------------------------------------------------
    def policy(self, root: yaml.Node | None) -> Policy:
        kw: dict = {"source": self.source}
        if root is None:  # empty file: all defaults
            return Policy(**kw)
        top = self.mapping(
            root, "", ("interval", "auto_interval", "tracking", "targets", "nodes", "fast_tier",
                       "hotness", "migration", "metrics", "huge_pages", "log_level"),
        )
        if "interval" in top:
            n = top["interval"][1]
            if self.value(n, "interval") == "auto":
                kw["interval_auto"] = True
            else:
                kw["interval"] = self.duration(n, "interval")
                kw["interval_auto"] = False
        if "auto_interval" in top:
            self.auto_interval(top, kw)
        if "tracking" in top:
            n = top["tracking"][1]
            v = self.string(n, "tracking")
            if v not in TRACKING_CHOICES:
                self.fail(n, "tracking", f"{v!r} is not one of {', '.join(TRACKING_CHOICES)}")
            kw["tracking"] = v
        if "targets" in top:
            kw["targets"] = self.targets(top["targets"][1])
        if "nodes" in top:
            nodes = self.mapping(top["nodes"][1], "nodes", ("fast", "slow"))
            fast = self.node_list(nodes["fast"][1], "nodes.fast") if "fast" in nodes else None
            slow = self.node_list(nodes["slow"][1], "nodes.slow") if "slow" in nodes else None
            if fast and slow and set(fast) & set(slow):
                both = sorted(set(fast) & set(slow))
                self.fail(nodes["slow"][1], "nodes.slow", f"node(s) {both} are also listed as fast")
            kw["fast_nodes"], kw["slow_nodes"] = fast, slow
        if "fast_tier" in top:
            ft = self.mapping(top["fast_tier"][1], "fast_tier", ("keep_free", "demote_below"))
            for k in ft:
                a = self.unit(ft[k][1], f"fast_tier.{k}", parse_amount, "size or percentage")
                if a.fraction is not None and a.fraction >= 1.0:
                    self.fail(ft[k][1], f"fast_tier.{k}", "must be below 100%")
                kw[k] = a
            keep, demote = kw.get("keep_free", Policy.keep_free), kw.get("demote_below", Policy.demote_below)
            if keep.comparable(demote) and not demote <= keep:
                n = ft["demote_below"][1] if "demote_below" in ft else ft["keep_free"][1]
                k = "demote_below" if "demote_below" in ft else "keep_free"
                self.fail(n, f"fast_tier.{k}",
                          f"demote_below ({demote}) must not exceed keep_free ({keep}): demotion "
                          "starts below demote_below and stops once keep_free is free again")
        if "hotness" in top:
            h = self.mapping(top["hotness"][1], "hotness", ("window", "min_hot", "min_gain", "hysteresis"))
            if "hysteresis" in h:  # refused rather than aliased: a level count is not a gain
                self.fail(h["hysteresis"][0], "hotness.hysteresis",
                          "replaced by hotness.min_gain (a percentage, default 5%): pages are now "
                          "displaced by measured access rates, not by a level difference; "
                          "remove hysteresis (see etc/tierd.yaml)")
            if "window" in h:
                kw["window"] = self.integer(h["window"][1], "hotness.window", 1, WINDOW_MAX)
            if "min_hot" in h:
                kw["min_hot"] = self.integer(h["min_hot"][1], "hotness.min_hot", 0, HOTNESS_MAX)
            if "min_gain" in h:
                kw["min_gain"] = self.unit(h["min_gain"][1], "hotness.min_gain", parse_fraction,
                                           "percentage")
        if "migration" in top:
            m = self.mapping(top["migration"][1], "migration", ("rate", "query_rate", "batch", "retry_after"))
            for k in ("rate", "query_rate"):
                if k in m:
                    kw[k] = self.unit(m[k][1], f"migration.{k}", parse_rate, "rate")
                    if kw[k] < PAGE_SIZE:
                        self.fail(m[k][1], f"migration.{k}", "must be at least 4KiB/s")
            if "batch" in m:
                kw["batch"] = self.unit(m["batch"][1], "migration.batch", parse_size, "size")
                if kw["batch"] < PAGE_SIZE:
                    self.fail(m["batch"][1], "migration.batch", "must be at least one page (4KiB)")
                if kw["batch"] > MAX_BATCH:
                    self.fail(m["batch"][1], "migration.batch",
                              f"must be at most {format_size(MAX_BATCH)} (pages per move_pages call)")
            if "retry_after" in m:
                kw["retry_after"] = self.integer(m["retry_after"][1], "migration.retry_after", 1, 1 << 20)
        if "metrics" in top:
            mm = self.mapping(top["metrics"][1], "metrics", ("listen",))
            if "listen" in mm:
                n = mm["listen"][1]
                v = self.value(n, "metrics.listen")
                if v is None or v is False:
                    v = ""
                if not isinstance(v, str):
                    self.fail(n, "metrics.listen", f"expected \"HOST:PORT\" or \"\", got {v!r}")
                err = _check_listen(v)
                if err:
                    self.fail(n, "metrics.listen", err)
                kw["metrics_listen"] = v
        if "huge_pages" in top:
            hp = self.mapping(top["huge_pages"][1], "huge_pages", ("split", "dense"))
            if "split" in hp:
                n = hp["split"][1]
                v = self.value(n, "huge_pages.split")
                if v not in ("auto", "off", False):  # YAML 1.1 reads a bare off as false
                    self.fail(n, "huge_pages.split", f"{v!r} is not one of auto, off")
                kw["huge_split"] = v == "auto"
            if "dense" in hp:
                n = hp["dense"][1]
                kw["huge_dense"] = self.unit(n, "huge_pages.dense", parse_fraction, "percentage")
                if kw["huge_dense"] <= 0:
                    self.fail(n, "huge_pages.dense", "must be above 0%")
        if "log_level" in top:
            n = top["log_level"][1]
            v = self.string(n, "log_level")
            if v.upper() not in LOG_LEVELS:
                self.fail(n, "log_level", f"{v!r} is not one of {', '.join(LOG_LEVELS)}")
            kw["log_level"] = v.upper()
        return Policy(**kw)

    def duration(self, n: yaml.Node, key: str) -> float:
        v = self.unit(n, key, parse_duration, "duration")
        if v <= 0:
            self.fail(n, key, "must be longer than 0s")
        if v < MIN_INTERVAL:
            self.fail(n, key, f"must be at least {format_duration(MIN_INTERVAL)}")
        if v > 86400:
            self.fail(n, key, "must be at most a day (24h)")
        if abs(v * 1000 - round(v * 1000)) > 1e-6:
            self.fail(n, key, "must be a whole number of milliseconds")
        return round(v * 1000) / 1000

    def auto_interval(self, top: dict, kw: dict) -> None:
        """The auto_interval section (only meaningful with ``interval: auto``)."""
        knode, node = top["auto_interval"]
        if not kw.get("interval_auto", Policy.interval_auto):
            self.fail(knode, "auto_interval", "applies only with `interval: auto` (the interval "
                      "is fixed here): remove the section or set interval: auto")
        a = self.mapping(node, "auto_interval", ("min", "max", "cpu"))
        if "min" in a:
            kw["interval_min"] = self.duration(a["min"][1], "auto_interval.min")
        if "max" in a:
            kw["interval"] = self.duration(a["max"][1], "auto_interval.max")
        if "cpu" in a:
            n = a["cpu"][1]
            kw["cpu_budget"] = self.unit(n, "auto_interval.cpu", parse_fraction, "percentage")
            if kw["cpu_budget"] <= 0:
                self.fail(n, "auto_interval.cpu", "must be above 0%")
        lo, hi = kw.get("interval_min", Policy.interval_min), kw.get("interval", Policy.interval)
        if lo > hi:
            k = "max" if "max" in a else "min"
            self.fail(a[k][1], f"auto_interval.{k}",
                      f"min ({format_duration(lo)}) must not exceed max ({format_duration(hi)})")

    def targets(self, node: yaml.Node) -> tuple[TargetSpec, ...]:
        if isinstance(node, yaml.ScalarNode) and self.value(node, "targets") is None:
            return ()
        out = []
        names: dict[str, int] = {}
        for i, tnode in enumerate(self.sequence(node, "targets")):
            p = f"targets[{i}]"
            t = self.mapping(tnode, p, ("name", "pids", "comm", "exe", "cmdline", "cgroup",
                                        "min_rss", "fast_share", "fast_cap"))
            if "name" not in t:
                self.fail(tnode, f"{p}.name", "every target needs a name")
            kw: dict = {}
            n = t["name"][1]
            kw["name"] = self.string(n, f"{p}.name")
            if not kw["name"].strip():
                self.fail(n, f"{p}.name", "must not be empty")
            if kw["name"] in names:
                self.fail(n, f"{p}.name", f"{kw['name']!r} is already the name of targets[{names[kw['name']]}]")
            names[kw["name"]] = i
            if "pids" in t:
                pn = t["pids"][1]
                if isinstance(pn, yaml.SequenceNode):
                    pids = [self.integer(x, f"{p}.pids[{j}]", 1, 1 << 22) for j, x in enumerate(pn.value)]
                else:
                    pids = [self.integer(pn, f"{p}.pids", 1, 1 << 22)]  # PID_MAX_LIMIT = 2**22
                if not pids:
                    self.fail(pn, f"{p}.pids", "empty list")
                kw["pids"] = tuple(pids)
            for k in ("comm", "exe", "cmdline"):
                if k in t:
                    kw[k] = self.regex(t[k][1], f"{p}.{k}")
            if "cgroup" in t:
                cn = t["cgroup"][1]
                cg = self.string(cn, f"{p}.cgroup")
                if not cg.startswith("/"):
                    self.fail(cn, f"{p}.cgroup", "a cgroup v2 path starts with / (e.g. /system.slice/db.service)")
                kw["cgroup"] = cg.rstrip("/") or "/"
            if not any(k in t for k in ("pids", "comm", "exe", "cmdline", "cgroup")):
                self.fail(tnode, p, "needs at least one selector: pids, comm, exe, cmdline or cgroup")
            if "min_rss" in t:
                kw["min_rss"] = self.unit(t["min_rss"][1], f"{p}.min_rss", parse_size, "size")
            for k in ("fast_share", "fast_cap"):
                if k in t:
                    kw[k] = self.unit(t[k][1], f"{p}.{k}", parse_amount, "size or percentage")
            share, cap = kw.get("fast_share"), kw.get("fast_cap")
            if share and cap and share.comparable(cap) and not share <= cap:
                self.fail(t["fast_cap"][1], f"{p}.fast_cap", f"fast_cap ({cap}) is below fast_share ({share})")
            out.append(TargetSpec(**kw))
        return tuple(out)


def _typename(v) -> str:
    if v is None:
        return "nothing"
    return {bool: "true/false", int: "a number", float: "a number", str: "a string"}.get(type(v), type(v).__name__)


_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def _check_listen(v: str) -> str | None:
    """None if ``v`` is "" or HOST:PORT (IPv6 as [addr]:port), else the complaint."""
    if v == "":
        return None
    host, sep, port = v.rpartition(":")
    if not sep or not host:
        return f"{v!r} is not HOST:PORT (e.g. 127.0.0.1:9464), or \"\" to disable"
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1] if host.endswith("]") else "-")
        except ValueError:
            return f"bad IPv6 address in {v!r} (write [::1]:9464)"
    elif ":" in host:
        return f"bad host in {v!r} (IPv6 addresses go in brackets: [::1]:9464)"
    elif not _HOST.fullmatch(host):
        return f"bad host in {v!r}: an IP address or a host name (letters, digits, - and .)"
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"port {port!r} is not a number in 1..65535"
    return None


def parse_policy(text: str, source: str = "<string>") -> Policy:
    """Validate policy YAML ``text``; ``source`` names it in errors."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        raise PolicyError(source, line, "yaml", f"{e.problem or e.context or 'syntax error'}") from None
    except yaml.YAMLError as e:  # ReaderError: a character YAML does not allow
        pos = getattr(e, "position", None)
        line = text.count("\n", 0, pos) + 1 if isinstance(pos, int) else None
        raise PolicyError(source, line, "yaml", str(getattr(e, "reason", "")) or "unreadable YAML") from None
    except RecursionError:
        raise PolicyError(source, None, "yaml", "nested too deeply") from None
    try:
        return _Walker(source).policy(root)
    except RecursionError:
        raise PolicyError(source, None, "yaml", "nested too deeply") from None


MAX_POLICY_BYTES = 1 << 20  # a policy is a few KiB; a bigger file is a mistake (or /dev/zero)


def read_policy_text(path: str, what: str = "a policy file") -> str:
    """The text of the policy file at ``path``, or PolicyError.  Only a regular file of at
    most MAX_POLICY_BYTES is read: a FIFO would block check-config and a reload for ever
    (and with it the interval loop), /dev/zero or a huge file would exhaust memory."""
    try:
        # O_NONBLOCK: opening a FIFO without a writer returns at once, to be refused below
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise PolicyError(path, None, None, f"cannot read: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PolicyError(path, None, None, f"not a regular file ({_file_kind(st.st_mode)})")
        data = b""
        while len(data) <= MAX_POLICY_BYTES:  # st_size may lie (a file growing meanwhile)
            chunk = os.read(fd, MAX_POLICY_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > MAX_POLICY_BYTES:
            raise PolicyError(path, None, None, f"larger than {format_size(MAX_POLICY_BYTES)}: "
                              f"not {what}")
    except OSError as e:
        raise PolicyError(path, None, None, f"cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(path, None, None, f"not UTF-8 text: {e.reason} at byte {e.start}") from None


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def load_policy(path: str) -> Policy:
    """Read and validate the policy file at ``path``."""
    return parse_policy(read_policy_text(path), path)
