"""The policy: one declaration of every key, and the YAML loader that validates all of it.

Each field of ``Policy`` and ``TargetSpec`` is declared once, with ``key()``: its YAML path,
its kind (type, unit, range), its default and a one-line doc.  That declaration drives loading,
validation and ``Policy.summary()`` (what `tierd check-config` prints); etc/tierd.yaml is the
operator's manual of every key (tests/unit/test_policy_schema.py checks that it documents
exactly the declared keys).  The few rules between keys are at the end of ``_Walker.policy``.

The loader composes the YAML into a node tree (``yaml.compose``, safe tags only), so every
value keeps its line; it then walks the tree against the declared keys and builds the whole
``Policy`` or raises ``PolicyError(source, line, key, message)``, whose string is
"FILE:LINE: KEY: message" with KEY the dotted path (``targets[1].min_rss``, list indices from
0).  Nothing half-applies: a caller either gets a complete, validated, immutable Policy or the
first error.
"""

from __future__ import annotations

import difflib
import ipaddress
import operator
import os
import re
import stat
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields

import yaml

from tierd.pages import PAGE_SIZE
from tierd.units import (
    Amount,
    UnitError,
    format_duration,
    format_fraction,
    format_rate,
    format_size,
    parse_amount,
    parse_duration,
    parse_fraction,
    parse_rate,
    parse_size,
)

__all__ = [
    "Amount", "Key", "Policy", "PolicyError", "Regex", "TargetSpec", "declared", "load_policy",
    "parse_policy", "TRACKING_CHOICES",
]

TRACKING_CHOICES = ("auto", "idle_bitmap", "page_idle")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
HOTNESS_MAX = 15  # hotness is 0..15 (the engine's hotness levels: tierd/engine/hotness.py)
WINDOW_MAX = 16  # at most 16 samples of history (the engine's bit-planes)
MAX_BATCH = 1 << 30  # migration.batch: one move_pages call's page list stays small
MIN_INTERVAL = 0.001  # 1ms: durations are whole milliseconds
MAX_INTERVAL = 86400  # a day
PID_MAX = 1 << 22  # PID_MAX_LIMIT
NODE_MAX = 4095  # highest node id accepted


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


# ---------------------------------------------------------------------------------------------
# Loader


class _Walker:
    """Reads a composed YAML node tree against the declared keys; the methods below the generic
    ones read the values of one kind each."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.constructor = yaml.constructor.SafeConstructor()

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

    def string(self, node: yaml.Node, key: str) -> str:
        v = self.value(node, key)
        if not isinstance(v, str):
            self.fail(node, key, f"expected a string, got {_typename(v)} (quote it)")
        return v

    def integer(self, node: yaml.Node, key: str, lo: int, hi: int) -> int:
        v = self.value(node, key)
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(node, key, f"expected a whole number, got {_typename(v)}")
        if not lo <= v <= hi:
            self.fail(node, key, f"{v} is out of range ({lo}..{hi})")
        return v

    def mapping(self, node: yaml.Node, prefix: str, allowed: tuple[str, ...]) -> dict:
        """{key: (key node, value node)}; unknown, removed and repeated keys are errors."""
        where = prefix or "policy"
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, where, f"expected a mapping of keys ({', '.join(allowed)})")
        out: dict = {}
        for knode, vnode in node.value:
            k = self.value(knode, where + ".<key>" if prefix else "<key>")
            path = f"{prefix}.{k}" if prefix else str(k)
            if not isinstance(k, str):
                self.fail(knode, path, "keys must be names")
            if path in REMOVED:
                self.fail(knode, path, REMOVED[path])
            if k not in allowed:
                close = difflib.get_close_matches(k, allowed, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                self.fail(knode, path, f"unknown key ({hint}known: {', '.join(allowed)})")
            if k in out:
                self.fail(knode, path, f"given twice (first on line {out[k][0].start_mark.line + 1})")
            out[k] = (knode, vnode)
        return out

    def fields(self, node: yaml.Node, prefix: str, cls) -> tuple[dict, dict]:
        """Reads the mapping ``node`` against the keys ``cls`` declares: ({field: value} of the
        keys given, {path: value node, or key node of a section} of what is given; paths
        relative to ``prefix``)."""
        tree: dict = {}  # {name: (field, Key) or {name: (field, Key)}}, in declaration order
        for f, k in declared(cls):
            section, _, leaf = k.path.rpartition(".")
            (tree.setdefault(section, {}) if section else tree)[leaf] = (f, k)
        kw: dict = {}
        given: dict = {}

        def walk(node: yaml.Node, tree: dict, rel: str) -> None:
            at = ".".join(filter(None, (prefix, rel)))
            for k, (knode, vnode) in self.mapping(node, at, tuple(tree)).items():
                path = f"{rel}.{k}" if rel else k
                if isinstance(tree[k], dict):
                    given[path] = knode
                    walk(vnode, tree[k], path)
                else:
                    given[path] = vnode
                    f, decl = tree[k]
                    kw[f] = decl.kind.parse(self, vnode, f"{at}.{k}" if at else k)

        walk(node, tree, "")
        return kw, given

    def policy(self, root: yaml.Node | None) -> Policy:
        kw, given = self.fields(root, "", Policy) if root is not None else ({}, {})  # empty file: defaults
        if kw.get("interval_auto", True) is not True:  # a fixed interval: that duration
            kw["interval"], kw["interval_auto"] = kw["interval_auto"], False
        p = Policy(source=self.source, **kw)
        # the rules between keys, each reported on a key that breaks it
        if "auto_interval" in given and not p.interval_auto:
            self.fail(given["auto_interval"], "auto_interval", "applies only with `interval: auto` (the "
                      "interval is fixed here): remove the section or set interval: auto")
        if "auto_interval" in given and p.interval_min > p.interval:
            k = "auto_interval.max" if "auto_interval.max" in given else "auto_interval.min"
            self.fail(given[k], k, f"min ({format_duration(p.interval_min)}) must not exceed max "
                      f"({format_duration(p.interval)})")
        if p.keep_free.comparable(p.demote_below) and not p.demote_below <= p.keep_free:
            k = "fast_tier.demote_below" if "fast_tier.demote_below" in given else "fast_tier.keep_free"
            self.fail(given[k], k, f"demote_below ({p.demote_below}) must not exceed keep_free "
                      f"({p.keep_free}): demotion starts below demote_below and stops once keep_free "
                      "is free again")
        both = sorted(set(p.fast_nodes or ()) & set(p.slow_nodes or ()))
        if both:
            self.fail(given["nodes.slow"], "nodes.slow", f"node(s) {both} are also listed as fast")
        return p

    # -- values of one kind each -----------------------------------------------------------------
    def duration(self, node: yaml.Node, key: str) -> float:
        v = SECONDS.parse(self, node, key)
        if abs(v * 1000 - round(v * 1000)) > 1e-6:
            self.fail(node, key, "must be a whole number of milliseconds")
        return round(v * 1000) / 1000

    def interval(self, node: yaml.Node, key: str) -> float | bool:
        """True for auto, else the fixed interval's seconds."""
        return True if self.value(node, key) == "auto" else self.duration(node, key)

    def ids(self, node: yaml.Node, key: str, lo: int, hi: int, empty: str = "empty list") -> tuple[int, ...]:
        """One whole number or a list of them, each in lo..hi."""
        if not isinstance(node, yaml.SequenceNode):
            return (self.integer(node, key, lo, hi),)
        if not node.value:
            self.fail(node, key, empty)
        return tuple(self.integer(x, f"{key}[{j}]", lo, hi) for j, x in enumerate(node.value))

    def nodes(self, node: yaml.Node, key: str) -> tuple[int, ...] | None:
        """"auto"/empty -> None; node ids, or a kernel list "0,2-3"."""
        v = self.value(node, key) if isinstance(node, yaml.ScalarNode) else []
        if v is None or v == "auto":
            return None
        if isinstance(v, str):
            from tierd.linux.sysfs import parse_nodelist  # pure parser, no file access

            try:
                ids = parse_nodelist(v)
            except ValueError:
                ids = ()
            if not ids or max(ids) > NODE_MAX:
                self.fail(node, key, f"expected auto or a list of node ids, got {v!r}")
            return ids
        ids = self.ids(node, key, 0, NODE_MAX, "empty list (write auto, or leave the key out)")
        if len(set(ids)) != len(ids):
            self.fail(node, key, "a node is listed twice")
        return tuple(sorted(ids))

    def listen(self, node: yaml.Node, key: str) -> str:
        v = self.value(node, key)
        v = "" if v is None or v is False else v
        if not isinstance(v, str):
            self.fail(node, key, f"expected \"HOST:PORT\" or \"\", got {v!r}")
        err = _check_listen(v)
        if err:
            self.fail(node, key, err)
        return v

    def name(self, node: yaml.Node, key: str) -> str:
        v = self.string(node, key)
        if not v.strip():
            self.fail(node, key, "must not be empty")
        return v

    def regex(self, node: yaml.Node, key: str) -> Regex:
        text = self.string(node, key)
        try:
            return Regex.compile(text)
        except ValueError as e:
            self.fail(node, key, f"bad regular expression {text!r}: {e} (RE2 syntax: no "
                      "backreferences or lookaround)")

    def cgroup(self, node: yaml.Node, key: str) -> str:
        v = self.string(node, key)
        if not v.startswith("/"):
            self.fail(node, key, "a cgroup v2 path starts with / (e.g. /system.slice/db.service)")
        return v.rstrip("/") or "/"

    def targets(self, node: yaml.Node, key: str) -> tuple[TargetSpec, ...]:
        if isinstance(node, yaml.ScalarNode) and self.value(node, key) is None:
            return ()
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, key, "expected a list")
        out: list[TargetSpec] = []
        for i, tnode in enumerate(node.value):
            p = f"{key}[{i}]"
            kw, given = self.fields(tnode, p, TargetSpec)
            if "name" not in kw:
                self.fail(tnode, f"{p}.name", "every target needs a name")
            t = TargetSpec(**kw)
            first = next((j for j, o in enumerate(out) if o.name == t.name), None)
            if first is not None:
                self.fail(given["name"], f"{p}.name", f"{t.name!r} is already the name of {key}[{first}]")
            if not any(s in kw for s in SELECTORS):
                self.fail(tnode, p, f"needs at least one selector: {', '.join(SELECTORS[:-1])} or "
                          f"{SELECTORS[-1]}")
            share, cap = t.fast_share, t.fast_cap
            if share and cap and share.comparable(cap) and not share <= cap:
                self.fail(given["fast_cap"], f"{p}.fast_cap", f"fast_cap ({cap}) is below fast_share ({share})")
            out.append(t)
        return tuple(out)


# ---------------------------------------------------------------------------------------------
# Kinds of value


@dataclass(frozen=True)
class Kind:
    """How one key's value is read from its YAML node and shown back as the operator would write
    it.  ``parse(walker, node, key)`` reports a bad value with ``walker.fail`` (FILE:LINE: KEY)."""

    parse: Callable
    show: Callable = str


def integer(lo: int, hi: int, unit: str = "") -> Kind:
    """A whole number in lo..hi, shown with its unit ("7 intervals")."""
    return Kind(lambda w, node, key: w.integer(node, key, lo, hi), lambda v: f"{v} {unit}".rstrip())


Bound = float | tuple[float, str] | None  # a limit, or a limit and how the error says it


def quantity(read: Callable, what: str, fmt: Callable, *, above: Bound = None, at_least: Bound = None,
             below: Bound = None, at_most: Bound = None) -> Kind:
    """A value in the units of tierd/units.py (``read``, its parser, also bounds it: at most
    1024PiB, percentages in 0.01% steps) within the bounds given; the bounds of a size or
    percentage (Amount) apply to its percentage.  ``what`` names it when it is missing."""

    def parse(w: _Walker, node: yaml.Node, key: str):
        v = w.value(node, key)
        if v is None:
            w.fail(node, key, f"needs a {what}")
        try:
            out = read(v)
        except UnitError as e:
            w.fail(node, key, str(e))
        x = out.fraction if isinstance(out, Amount) else out
        for bound, outside, says in ((above, operator.le, "above"), (at_least, operator.lt, "at least"),
                                     (below, operator.ge, "below"), (at_most, operator.gt, "at most")):
            limit, words = bound if isinstance(bound, tuple) else (bound, None)
            if limit is not None and x is not None and outside(x, limit):
                w.fail(node, key, f"must be {words or says + ' ' + fmt(limit)}")
        return out

    return Kind(parse, fmt)


def choice(names: tuple[str, ...], values: tuple | None = None, *, text: bool = True,
           fold: bool = False) -> Kind:
    """One of ``names``; the field holds the matching one of ``values`` (default: the name).
    ``text``: only a string (else any scalar: YAML 1.1 reads a bare off as false); ``fold``:
    case-insensitive, held in upper case."""
    values = values or names

    def parse(w: _Walker, node: yaml.Node, key: str):
        v = w.string(node, key) if text else w.value(node, key)
        name = v.upper() if fold else "off" if v is False else v
        if name not in names:
            w.fail(node, key, f"{v!r} is not one of {', '.join(names)}")
        return values[names.index(name)]

    return Kind(parse, lambda v: names[values.index(v)])


SECONDS = quantity(parse_duration, "duration", format_duration, above=(0, "longer than 0s"),
                   at_least=MIN_INTERVAL, at_most=(MAX_INTERVAL, "at most a day (24h)"))
DURATION = Kind(_Walker.duration, format_duration)  # whole milliseconds
SIZE = quantity(parse_size, "size", format_size)
PERCENT = quantity(parse_fraction, "percentage", format_fraction)
SHARE = quantity(parse_fraction, "percentage", format_fraction, above=0)
AMOUNT = quantity(parse_amount, "size or percentage", str)
WATERMARK = quantity(parse_amount, "size or percentage", str, below=(1.0, "below 100%"))
RATE = quantity(parse_rate, "rate", format_rate, at_least=PAGE_SIZE)
REGEX = Kind(_Walker.regex, lambda v: f"/{v.pattern}/")
NODES = Kind(_Walker.nodes, lambda v: "auto" if v is None else ",".join(map(str, v)))
PIDS = Kind(lambda w, node, key: w.ids(node, key, 1, PID_MAX), lambda v: str(list(v)))


# ---------------------------------------------------------------------------------------------
# The schema: one declaration per key


@dataclass(frozen=True)
class Key:
    """A policy key: its dotted YAML path (within a targets entry, for TargetSpec), its kind
    and a one-line doc (the manual is etc/tierd.yaml)."""

    path: str
    kind: Kind
    doc: str


def key(path: str, kind: Kind, default, doc: str):
    """Declares a field of Policy or TargetSpec as a policy key (``default`` MISSING: required)."""
    return field(default=default, metadata={"key": Key(path, kind, doc)})


def declared(cls) -> tuple[tuple[str, Key], ...]:
    """(field name, Key) of every key ``cls`` (Policy or TargetSpec) declares, in order."""
    return tuple((f.name, f.metadata["key"]) for f in fields(cls) if "key" in f.metadata)


SELECTORS = ("pids", "comm", "exe", "cmdline", "cgroup")  # a target needs at least one


@dataclass(frozen=True)
class TargetSpec:
    """Which processes one target covers and its share of the fast tier.

    A process matches if it satisfies every selector given (pids, comm, exe, cmdline, cgroup)
    and has at least ``min_rss`` bytes resident.
    """

    name: str = key("name", Kind(_Walker.name), MISSING, "required, unique: names the target")
    pids: tuple[int, ...] = key("pids", PIDS, (), "process ids")
    comm: Regex | None = key("comm", REGEX, None, "searched on /proc/PID/comm")
    exe: Regex | None = key("exe", REGEX, None, "searched on the resolved /proc/PID/exe")
    cmdline: Regex | None = key("cmdline", REGEX, None, "searched on the NUL->space joined cmdline")
    cgroup: str | None = key("cgroup", Kind(_Walker.cgroup), None, "cgroup v2 path, with the subtree below")
    min_rss: int = key("min_rss", SIZE, 0, "bytes; processes with less resident memory are left alone")
    fast_share: Amount | None = key("fast_share", AMOUNT, None, "guaranteed part of the fast tier")
    fast_cap: Amount | None = key("fast_cap", AMOUNT, None, "at most this much of the fast tier")

    def summary(self) -> str:
        """"name: key=value ..." of the keys given."""
        given = [(k, getattr(self, f)) for f, k in declared(TargetSpec) if f != "name"]
        return " ".join([f"{self.name}:"] + [f"{k.path}={k.kind.show(v)}" for k, v in given if v])


@dataclass(frozen=True)
class Policy:
    """A complete, validated policy (its defaults are what etc/tierd.yaml shows)."""

    source: str = "<defaults>"  # the file it was loaded from
    interval_auto: bool = key("interval", Kind(_Walker.interval, lambda v: "auto"), True,
                              "auto (tierd/engine/interval.py), or a fixed interval (sets interval)")
    interval_min: float = key("auto_interval.min", DURATION, 1.0, "shortest interval, while a change is under way")
    interval: float = key("auto_interval.max", DURATION, 5.0, "the fixed interval, or the longest with auto")
    cpu_budget: float = key("auto_interval.cpu", SHARE, 0.10, "share of one CPU that sampling may use")
    tracking: str = key("tracking", choice(TRACKING_CHOICES), "auto", "kernel interface reporting accesses")
    targets: tuple[TargetSpec, ...] = key("targets", Kind(_Walker.targets), (), "the processes tierd manages")
    fast_nodes: tuple[int, ...] | None = key("nodes.fast", NODES, None, "None: auto (Topology.classify)")
    slow_nodes: tuple[int, ...] | None = key("nodes.slow", NODES, None, "None: auto (Topology.classify)")
    keep_free: Amount = key("fast_tier.keep_free", WATERMARK, Amount(fraction=0.10),
                            "promotion never takes a fast node's free memory below this")
    demote_below: Amount = key("fast_tier.demote_below", WATERMARK, Amount(fraction=0.05),
                               "free memory below this: demote until keep_free is free")
    window: int = key("hotness.window", integer(1, WINDOW_MAX), 8, "samples of history kept per page")
    min_hot: int = key("hotness.min_hot", integer(0, HOTNESS_MAX), 1, "colder pages are never promoted")
    min_gain: float = key("hotness.min_gain", PERCENT, 0.05, "gain a displacing page must bring (engine/gain.py)")
    rate: int = key("migration.rate", RATE, 128 << 20, "bytes moved per second at most")
    query_rate: int = key("migration.query_rate", RATE, 64 << 30, "address space per second to learn nodes of")
    batch: int = key("migration.batch", quantity(
        parse_size, "size", format_size, at_least=(PAGE_SIZE, "at least one page (4KiB)"),
        at_most=(MAX_BATCH, f"at most {format_size(MAX_BATCH)} (pages per move_pages call)")),
        4 << 20, "bytes of pages per move_pages call")
    retry_after: int = key("migration.retry_after", integer(1, 1 << 20, "intervals"), 4,
                           "intervals a refused page waits (doubling per failure)")
    metrics_listen: str = key("metrics.listen", Kind(_Walker.listen, lambda v: v or "(disabled)"),
                              "127.0.0.1:9464", "HOST:PORT of /metrics, \"\" disables")
    huge_split: bool = key("huge_pages.split", choice(("auto", "off"), (True, False), text=False), True,
                           "split sparsely hot huge pages (tierd/engine/huge.py)")
    huge_dense: float = key("huge_pages.dense", SHARE, 0.9, "a probed huge page this hot is kept whole")
    log_level: str = key("log_level", choice(LOG_LEVELS, fold=True), "INFO", "the daemon's logging threshold")

    def target(self, name: str) -> TargetSpec:
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(name)

    def summary(self) -> dict[str, str]:
        """Human-readable effective values, key path -> value (for `tierd check-config`)."""
        out = {}
        for f, k in declared(Policy):
            if k.path == "targets":
                out.update((f"targets[{i}]", t.summary()) for i, t in enumerate(self.targets))
            elif self.interval_auto or not k.path.startswith("auto_interval."):
                out[k.path] = k.kind.show(getattr(self, f))
        if not self.interval_auto:
            out["interval"] = format_duration(self.interval)
        return out


# Keys that were renamed or replaced: the error says what to write instead.
REMOVED = {
    "hotness.hysteresis": "replaced by hotness.min_gain (a percentage, default 5%): pages are now "
                          "displaced by measured access rates, not by a level difference; remove "
                          "hysteresis (see etc/tierd.yaml)",
}


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
