"""What a page's hotness is worth: measured access probability per (tier, hotness level).

Hotness is a noisy reading of a page's access rate: at the capacity boundary a page expects
about one access per window, so its hotness has a standard deviation of about two levels.
The slow tier holds several times more pages than the fast tier, so its upper tail of lucky
pages keeps producing "hot-looking" pages whose true rate is no higher than that of the fast
pages they would displace (a winner's curse): the same level means a different rate on each
tier.  A fixed hysteresis cannot tell the two apart; it only trades recovery speed for churn.

The engine can measure the difference.  Each commit, ``PageState`` counts, on a rotating
slice of every process, the pages of each (node, level) cell as of the previous commit and
how many of them the new sample found accessed (``PageState.est``).  ``GainModel`` sums those
per tier, smooths them over intervals (weight ``DECAY`` per interval), shrinks each cell
toward the level below it (``PRIOR`` pseudo-pages, so empty cells have a value and sparse
ones are not trusted), and makes the estimate monotone in level (pool adjacent violators,
weighted by pages); see ``estimate``.  Placement then lets
a slow page at level p displace a fast page at level f only when

    q_slow[p] - q_fast[f] > min_gain + Z * sqrt(se_slow[p]**2 + se_fast[f]**2)

(``Gain.allows``): the expected gain, in accesses per sample, beats the margin plus its
statistical error.

A phase change breaks the relation between level and rate: the hot pages of the old phase sit
at high levels on the fast tier and are no longer accessed.  When the last estimate
mispredicts this interval's measurement (some cell with at least ``CHECK_PAGES`` pages is off
by more than the margin plus ``CHECK_SIGMA`` standard errors), the model restarts from the new
measurement and placement uses the plain level rule for that interval (``update`` returns
None), which follows a phase change within about three intervals.

Thrash.  When the hot set moves faster than placement can follow, moves stop paying: pages
promoted for one phase are cold by the time they arrive.  The engine measures what its moves
bought: the pages it promoted and demoted (displacements; a sample of them) are looked at in
the next sample, and ``GainModel.moved`` gets the accesses the promoted ones got minus those
the demoted ones got, and what the estimate behind the plan expected them to get (``Gain.q``
of their tier and level; the level / 15 without one), smoothed over intervals (weight DECAY).
Below PAID_SHARE of the expected gain (the estimate mispredicts: the hot set moved before
the pages arrived) or below min_gain per page moved (the same margin a swap must promise) the
moves did not pay and ``pace`` (1 = the full migration budget) halves (when they made things worse, it drops to 0 at once; displacements
count only as far as they made room for promotions); below PACE_MIN it is 0: promotions stop, except a probe
of PROBE_PAGES every PROBE_EVERY intervals, so tierd sees when the hot set settles (then it
restarts at PACE_MIN).  Moves that pay double the pace back, up to 1.  Placement scales promotions and displacements by it, not the
watermark and cap demotions, which protect the machine.  A hot set that moves every few
intervals still pays (its pages stay hot for a while after they arrive); one that moves
every interval is left where it is, which costs nothing.

Overflow.  When the top level holds more pages than the fast tier (tierd/engine/placement.py),
its pages are ranked by their top counter (samples in a row at level 15, PageState.top):
``est_top`` counts them per counter value the same way, and ``Gain.ext`` is the estimate over
the extended levels 0..14, 15 (level-15 pages without a counter), 16..30 (level 15 with
counter 1..15), built and tested like the 16-level one.  There pages are accessed in nearly
every sample, and a probability near 1 hides what a swap buys (0.95 and 0.999 are 3 and 7
accesses a sample: 0.05 apart, not more than min_gain, and a 64x hot set stopped at 0.86 of
the best placement): ``Gain.ext`` compares the rates behind the probabilities (``rate``,
standard errors by the delta method), and moves ranked by the top counter are judged in
rates too (``group_rate``: the pages' share accessed in the next sample, as a rate).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from tierd.engine.hotness import LEVELS, hotness_reference

FAST, SLOW = 0, 1
Z = 2.0  # standard errors of the estimated gain that must lie above the margin
DECAY = 0.5  # weight of last interval's counts in the smoothed estimate
PRIOR = 2.0  # pseudo-pages per cell at the estimate of the level below
CHECK_PAGES = 64  # cells smaller than this do not count as evidence of a misprediction
CHECK_SIGMA = 4.0
PACE_MIN = 1.0 / 64
PROBE_PAGES = 128  # promotions (and displacements) of a probe while stopped
PROBE_EVERY = 4  # intervals between probes
PAID_MIN_PAGES = 64  # moves seen (smoothed) before their worth is judged
PAID_SHARE = 0.5  # moves pay when they bring at least this share of the gain expected


@dataclass(frozen=True)
class Gain:
    """Estimated access probability per sample, q[tier, level], and its standard error."""

    q: np.ndarray  # [2, 16]: row FAST, row SLOW
    se: np.ndarray  # [2, 16]
    margin: float
    ext: Gain | None = None  # over the extended levels (see the module docstring), if counted
    rates: bool = False  # compare access rates, not probabilities (see "Overflow")

    def allows(self, slow_level: int, fast_level: int) -> bool:
        """May a slow page at ``slow_level`` displace a fast page at ``fast_level``?"""
        s, f = (SLOW, slow_level), (FAST, fast_level)
        if self.rates:  # rate -ln(1 - q), its standard error by the delta method
            qs, qf = min(self.q[s], Q_MAX), min(self.q[f], Q_MAX)
            d = np.log1p(-qf) - np.log1p(-qs)
            err = Z * float(np.hypot(self.se[s] / (1 - qs), self.se[f] / (1 - qf)))
        else:
            d = self.q[s] - self.q[f]
            err = Z * float(np.hypot(self.se[s], self.se[f]))
        return bool(d > self.margin + err)

    def victim_levels(self, slow_level: int) -> int:
        """Fast levels 0..k-1 that a slow page at ``slow_level`` may displace (q_fast is
        monotone, so they are a prefix)."""
        k = 0
        while k < self.q.shape[1] and self.allows(slow_level, k):
            k += 1
        return k


def monotone(q: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares non-decreasing fit of ``q`` (pool adjacent violators).
    Returns (fitted q, the block each level was pooled into, as a block id per level)."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for qi, wi in zip(q.tolist(), w.tolist()):
        blocks.append([qi, wi, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, c2 = blocks.pop()
            m1, w1, c1 = blocks.pop()
            wt = w1 + w2
            blocks.append([(m1 * w1 + m2 * w2) / wt if wt else (m1 + m2) / 2, wt, c1 + c2])
    fq = np.concatenate([np.full(c, m) for m, _, c in blocks])
    ids = np.concatenate([np.full(c, i) for i, (_, _, c) in enumerate(blocks)])
    return fq, ids


def estimate(n: np.ndarray, a: np.ndarray, margin: float) -> Gain:
    """Gain from page counts ``n`` [2, 16] and accessed counts ``a`` [2, 16].

    Each cell is shrunk toward the level below it (``PRIOR`` pseudo-pages at that level's
    estimate; level 0 toward 0): a cell with few pages, typically the slow tier's lucky
    pages at high levels, is not trusted to be hotter than the levels below until its own
    pages show it.  Then the fit is made monotone, and the standard error of each pooled
    block comes from its pages alone (Agresti-Coull: two accesses and two misses added), so
    a cell without data never looks certain."""
    levels = n.shape[1]
    q = np.empty((2, levels))
    se = np.empty((2, levels))
    for t in (FAST, SLOW):
        raw = np.empty(levels)
        below = 0.0
        for v in range(levels):
            raw[v] = below = (a[t, v] + PRIOR * below) / (n[t, v] + PRIOR)
        fq, ids = monotone(raw, n[t] + PRIOR)
        bn = np.bincount(ids, weights=n[t])[ids]
        ba = np.bincount(ids, weights=a[t])[ids]
        pt = (ba + 2.0) / (bn + 4.0)
        q[t] = fq
        se[t] = np.sqrt(pt * (1 - pt) / (bn + 4.0))
    return Gain(q, se, margin)


class GainModel:
    """Per-tier estimates carried from interval to interval (see the module docstring)."""

    def __init__(self) -> None:
        self.n: np.ndarray | None = None
        self.a: np.ndarray | None = None
        self.top: tuple[np.ndarray, np.ndarray] | None = None  # smoothed (n, a) by counter
        self.pace = 1.0  # share of the migration budget for promotions (see "Thrash")
        self.stopped = 0  # intervals since promotions stopped (pace 0)
        self.paid = 0.0  # smoothed accesses the moves bought, expected to buy, and pages moved
        self.paid_expected = 0.0
        self.paid_pages = 0.0
        self.last: Gain | None = None
        self.mispredicted = False

    def reset(self) -> None:
        self.__init__()

    def update(self, est: np.ndarray, fast_cls, slow_cls, margin: float,
               est_top: np.ndarray | None = None) -> Gain | None:
        """Fold in one interval's counts (``est``: [2, classes, 16], summed over processes;
        ``fast_cls``/``slow_cls``: class indices of the tiers; ``est_top``: the level-15
        pages' counts by top counter, [2, classes, 16], if kept).  Returns the estimate to
        place by, or None: no measurement yet, or a misprediction (use the level rule)."""
        fast_cls, slow_cls = list(fast_cls), list(slow_cls)
        if not fast_cls or not slow_cls:
            return None
        n, a = _tiers(est, fast_cls, slow_cls)
        if not n.any():
            self.mispredicted = False
            return self.last
        self.mispredicted = self.last is not None and mispredicts(self.last, n, a)
        if self.n is None or self.mispredicted:
            self.n, self.a = n, a
        else:
            self.n = DECAY * self.n + n
            self.a = DECAY * self.a + a
        self.last = estimate(self.n, self.a, margin)
        if est_top is not None:
            tn, ta = _tiers(est_top, fast_cls, slow_cls)
            if self.top is None or self.mispredicted:
                self.top = (tn, ta)
            else:
                self.top = (DECAY * self.top[0] + tn, DECAY * self.top[1] + ta)
            self.last = Gain(self.last.q, self.last.se, margin, _extended(self.n, self.a, *self.top, margin))
        else:
            self.top = None
        return None if self.mispredicted else self.last


    def moved(self, gained: float, expected: float, pages: int, margin: float) -> None:
        """What the last interval's moves bought: ``gained`` accesses (the promoted pages'
        in this sample minus the demoted ones': accessed bits, or ``group_rate``s for moves
        ranked by the top counter), against ``expected``, over ``pages`` pages moved.
        Sets ``pace``."""
        self.paid = DECAY * self.paid + gained
        self.paid_expected = DECAY * self.paid_expected + expected
        self.paid_pages = DECAY * self.paid_pages + pages
        if self.paid_pages < PAID_MIN_PAGES:
            return
        if self.paid < 0:  # the moves made things worse: stop at once
            self.pace = 0.0
        elif self.paid < max(margin * self.paid_pages, PAID_SHARE * self.paid_expected):
            self.pace = self.pace / 2 if self.pace / 2 >= PACE_MIN else 0.0
        else:
            self.pace = min(1.0, max(PACE_MIN, self.pace * 2))

    def promotion_budget(self, move_budget: int) -> int:
        """This interval's pages for promotions and displacements (call once per
        interval): ``pace`` of the migration budget, or a probe while stopped."""
        if self.pace > 0:
            self.stopped = 0
            return int(move_budget * self.pace)
        self.stopped += 1
        return min(move_budget, PROBE_PAGES) if self.stopped % PROBE_EVERY == 0 else 0


    def expected(self, slow_level: np.ndarray, fast_level: np.ndarray, rates: bool = False) -> float:
        """Accesses per sample the last estimate expects of pages promoted from these
        (extended) levels minus pages demoted from these: access probabilities, or with
        ``rates`` the accesses behind them (see ``rate``; for moves ranked by the top
        counter, whose pages are accessed in nearly every sample)."""
        g = self.last
        conv = rate if rates else (lambda x: x)

        def q(tier, lv):
            lv = np.asarray(lv, dtype=np.int64)
            if g is None:
                return conv(np.minimum(lv, LEVELS - 1) / (LEVELS - 1.0))
            if g.ext is not None:
                return conv(g.ext.q[tier][np.minimum(lv, g.ext.q.shape[1] - 1)])
            return conv(g.q[tier][np.minimum(lv, LEVELS - 1)])

        return float(q(SLOW, slow_level).sum() - q(FAST, fast_level).sum())


NEED_SHARES = (0.90, 0.95, 0.99)
Q_MAX = 0.999  # access probabilities are read as rates up to -ln(1 - Q_MAX) = 6.9 per sample


def rate(q):
    """Accesses per sample behind an access probability per sample (Poisson: q = 1 -
    exp(-rate)), capped at Q_MAX.  Near 0 the two agree; near 1 a difference in q hides
    the difference in accesses that a move buys (a page accessed 4 times a sample and one
    accessed 7 times both read q ~ 1)."""
    return -np.log1p(-np.minimum(q, Q_MAX))


def group_rate(pages: int, accessed: int) -> float:
    """Accesses per sample of ``pages`` pages of which ``accessed`` were accessed in one
    sample, all together (pages x the rate of their share accessed)."""
    return pages * float(rate(accessed / pages)) if pages else 0.0


FIT_BINS = 64  # log-spaced rank bins of the model's histogram
FIT_TV = 0.02  # the fit stands for the curve when its level histogram is this close (TV)
FIT_S = (0.0, 3.0)  # exponents searched
GOLDEN = (5 ** 0.5 - 1) / 2


def need(pages: np.ndarray, q: np.ndarray, shares=NEED_SHARES, window: int = 8) -> tuple[int, ...] | None:
    """The miss-ratio curve read at ``shares``: pages of fast memory that would serve that
    share of a target's accesses, from its pages per (tier, level) cell ``pages`` [2, 16]
    and the measured access probability per sample of each cell ``q`` [2, 16].  None
    without accesses.

    One Accessed bit per sample cannot tell a page accessed 5 times a sample from one
    accessed 500 times, and in a skewed target those pages take most of the accesses (zipf
    1.1, 16 GiB: 83% of them; read as "at most 6.9 a sample" each, the 90% need came out 18x
    too big).  So the curve comes from a fit where one fits: rates following a power law
    in rank, rate = A rank^-s (Zipf; s = 0 is a flat target), chosen so that the hotness
    histogram they would produce (``zipf_fit``: each page's ``window`` samples, the level
    weights of tierd.engine.hotness) matches the target's.  Where no power law matches it
    (total variation above FIT_TV: e.g. a hot set of one rate with a cold rest), the cells
    are read as they are: each cell's rate is -ln(1 - q) per page and sample (the Poisson
    rate behind the probability), the hottest cells first, the last one in part; there
    rates above 6.9 a sample read as 6.9, so a saturated target's need is overestimated."""
    n = np.asarray(pages, dtype=np.float64)
    fit = zipf_fit(n.reshape(-1, n.shape[-1]).sum(axis=0), window)
    if fit is not None:
        s, total = fit
        return tuple(int(np.ceil(_power_inverse(0, total, s, f))) for f in shares)
    n = n.ravel()
    r = rate(np.asarray(q, dtype=np.float64).ravel())
    acc = n * r
    total = acc.sum()
    if total <= 0:
        return None
    order = np.argsort(-r, kind="stable")
    cum_acc = np.cumsum(acc[order])
    cum_pages = np.cumsum(n[order])
    out = []
    for f in shares:
        i = min(int(np.searchsorted(cum_acc, f * total)), order.size - 1)
        before_acc = cum_acc[i - 1] if i else 0.0
        before_pages = cum_pages[i - 1] if i else 0.0
        ri = r[order[i]]
        out.append(int(np.ceil(before_pages + ((f * total - before_acc) / ri if ri > 0 else 0))))
    return tuple(out)


@functools.lru_cache(maxsize=4)
def level_matrix(window: int) -> np.ndarray:
    """[window + 1, 16]: C[k, v] = sampled histories of the window with k accesses whose
    hotness is v (tierd.engine.hotness.weights)."""
    bits = (np.arange(1 << window)[None, :] >> np.arange(window)[:, None]) & 1
    lv = hotness_reference(bits, window)
    c = np.zeros((window + 1, LEVELS))
    np.add.at(c, (bits.sum(axis=0), lv), 1)
    return c


def zipf_fit(hist: np.ndarray, window: int = 8) -> tuple[float, int] | None:
    """(s, pages) of the power law rate = A rank^-s whose expected hotness histogram is
    closest to ``hist`` (pages per level), if it is within FIT_TV; else None.  Searched on
    a grid of s and of the rate at the boundary rank, coarse then fine."""
    hist = np.asarray(hist, dtype=np.float64)
    total = int(round(hist.sum()))
    if total < 2 or hist.size != LEVELS or not hist[1:].any():
        return None
    obs = hist / hist.sum()
    model = _ZipfModel(total, window)
    def best_b(s_grid):
        """For each exponent, the log rate at the last rank that fits best (golden-section
        search: the distance is unimodal in it) and that distance."""
        lo, hi = np.full(s_grid.size, -16.0), np.full(s_grid.size, 6.0)
        s2 = np.concatenate([s_grid, s_grid])
        for _ in range(28):
            m1, m2 = hi - GOLDEN * (hi - lo), lo + GOLDEN * (hi - lo)
            # both probes in one evaluation: the arrays are small, the per-call cost is not
            d = model.tv(s2, np.concatenate([m1, m2]), obs)
            worse = d[:s_grid.size] > d[s_grid.size:]
            lo, hi = np.where(worse, m1, lo), np.where(worse, hi, m2)
        b = (lo + hi) / 2
        return b, model.tv(s_grid, b, obs)

    s_grid = np.linspace(FIT_S[0], FIT_S[1], 31)
    for _ in range(3):  # exponent to 0.1, 0.01, 0.001
        b, d = best_b(s_grid)
        i = int(np.argmin(d))
        best = (s_grid[i], b[i], d[i])
        step = s_grid[1] - s_grid[0]
        s_grid = np.linspace(max(FIT_S[0], best[0] - step), min(FIT_S[1], best[0] + step), 21)
    return (float(best[0]), total) if best[2] <= FIT_TV else None


class _ZipfModel:
    """Expected hotness histograms (shares of the pages per level) of ``total`` pages whose
    rates follow rate = b (rank / total)^-s, over log-spaced rank bins."""

    def __init__(self, total: int, window: int) -> None:
        self.c = level_matrix(window)
        self.k = np.arange(window + 1)
        self.window = window
        edges = np.unique(np.geomspace(1, total + 1, FIT_BINS + 1).astype(np.int64))
        self.width = np.diff(edges).astype(np.float64) / total
        # the rank whose rate is the bin's mean rate is near its log-midpoint
        self.logm = np.log(np.sqrt(edges[:-1] * (edges[1:] - 1.0)) / total)

    def tv(self, s: np.ndarray, log_b: np.ndarray, obs: np.ndarray) -> np.ndarray:
        """Total variation distance from ``obs`` of the histograms for the pairs
        (s[i], log_b[i]): exponent, log rate at the last rank."""
        lam = np.exp(np.minimum(log_b[:, None] - s[:, None] * self.logm, 4.0))
        p = -np.expm1(-lam)
        w = self.window
        pk = np.empty(p.shape + (w + 1,))  # p^k (1 - p)^(w - k), by running products
        qk = np.empty_like(pk)
        pk[..., 0] = qk[..., w] = 1.0
        for i in range(w):
            np.multiply(pk[..., i], p, out=pk[..., i + 1])
            np.multiply(qk[..., w - i], 1 - p, out=qk[..., w - i - 1])
        bk = pk * qk  # [pairs, bins, k]
        pred = np.tensordot(bk, self.width, axes=([1], [0])) @ self.c  # [pairs, 16]
        return 0.5 * np.abs(pred - obs).sum(axis=-1)


def _power_integral(lo, hi, s: float):
    """Sum of r^-s over the ranks (lo, hi], as the integral from lo + 1/2 to hi + 1/2."""
    a, b = np.asarray(lo, dtype=np.float64) + 0.5, np.asarray(hi, dtype=np.float64) + 0.5
    if abs(s - 1) < 1e-9:
        return np.log(b / a)
    return (b ** (1 - s) - a ** (1 - s)) / (1 - s)


def _power_inverse(lo: float, hi: float, s: float, part: float) -> float:
    """The rank r in (lo, hi] where the sum of r^-s from lo reaches ``part`` of the range's."""
    a, b = lo + 0.5, hi + 0.5
    if abs(s - 1) < 1e-9:
        r = a * (b / a) ** part
    else:
        e = 1 - s
        r = (a ** e + part * (b ** e - a ** e)) ** (1 / e)
    return float(min(max(r - 0.5, lo), hi))


def _tiers(est: np.ndarray, fast_cls, slow_cls) -> tuple[np.ndarray, np.ndarray]:
    """[2 tiers, levels] page and access counts from [2, classes, levels]."""
    n = np.stack([est[0, fast_cls].sum(axis=0), est[0, slow_cls].sum(axis=0)]).astype(np.float64)
    a = np.stack([est[1, fast_cls].sum(axis=0), est[1, slow_cls].sum(axis=0)]).astype(np.float64)
    return n, a


def _extended(n, a, tn, ta, margin: float) -> Gain:
    """The estimate over the extended levels: 0..14, level 15 without a top counter, then
    level 15 by counter 1..15."""
    top = LEVELS - 1

    def ext(x, tx):
        rest = np.maximum(x[:, top:] - tx[:, 1:].sum(axis=1, keepdims=True), 0)
        return np.concatenate([x[:, :top], rest, tx[:, 1:]], axis=1)

    g = estimate(ext(n, tn), ext(a, ta), margin)
    return Gain(g.q, g.se, margin, rates=True)


def mispredicts(g: Gain, n: np.ndarray, a: np.ndarray) -> bool:
    """Does the estimate ``g`` miss this interval's measurement (n, a) by more than noise?"""
    ok = n >= CHECK_PAGES
    if not ok.any():
        return False
    r = np.divide(a, n, out=np.zeros_like(a), where=ok)
    sd = np.sqrt(g.q * (1 - g.q) / np.maximum(n, 1) + g.se ** 2)
    return bool((ok & (np.abs(r - g.q) > g.margin + CHECK_SIGMA * sd)).any())
