"""The access heatmap of ``tierd scan --heatmap FILE.png``.

``AccessGrid`` aggregates a scan as it happens: the rows are equal slices of the process's
resident address ranges laid end to end (unmapped gaps left out), the columns are the
samples, and a cell holds how many of the row's present pages were accessed in that sample.
It works on the packed 64-page words the readers return (popcounts, no unpacking), so its
size is rows x samples whatever the process's size: a row is 64 KiB of a small process and
about a GiB of a TiB one.  ``place`` adds, per row, the pages found on each NUMA node.

``render`` draws it with matplotlib (imported only here: the optional ``heatmap`` extra):
colour = share of the row's present pages accessed in the sample, grey = nothing resident;
beside it, per row, the share of the pages on each node; mapping names and addresses on
the address axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tierd.pages import PAGE_SHIFT, PAGE_SIZE, PAGES_PER_WORD

ROWS = 512  # rows of the picture: enough to see structure, few enough to read labels


@dataclass
class AccessGrid:
    """See the module docstring.  ``word_start``/``nwords``: the scanned extents, in
    64-page words, sorted by address."""

    word_start: np.ndarray
    nwords: np.ndarray
    samples: int
    rows: int = ROWS
    accessed: np.ndarray = field(init=False)  # int64[rows, samples]
    present: np.ndarray = field(init=False)  # int64[rows]: pages seen present in any sample
    nodes: dict = field(init=False, default_factory=dict)  # node id (or -errno) -> int64[rows]

    def __post_init__(self) -> None:
        self.word_start = np.asarray(self.word_start, np.uint64)
        self.nwords = np.asarray(self.nwords, np.int64)
        self.offset = np.concatenate(([0], np.cumsum(self.nwords)))  # extent -> first word
        self.total_words = int(self.offset[-1])
        self.rows = max(1, min(self.rows, self.total_words))
        self.accessed = np.zeros((self.rows, self.samples), np.int64)
        self.present = np.zeros(self.rows, np.int64)
        self._present_bits = {}  # extent -> OR of present words (only while scanning)

    @property
    def pages_per_row(self) -> float:
        return PAGES_PER_WORD * self.total_words / self.rows

    def _rows_of(self, extent: int, n: int) -> np.ndarray:
        w = self.offset[extent] + np.arange(n, dtype=np.int64)
        return w * self.rows // max(1, self.total_words)

    def add(self, sample: int, extent: int, present: np.ndarray, accessed: np.ndarray) -> None:
        """One sample of one extent (the reader's packed words)."""
        acc = np.asarray(accessed, np.uint64)
        rows = self._rows_of(extent, acc.size)
        self.accessed[:, sample] += np.bincount(rows, weights=np.bitwise_count(acc),
                                                minlength=self.rows).astype(np.int64)
        pres = np.asarray(present, np.uint64)
        seen = self._present_bits.get(extent)
        self._present_bits[extent] = pres.copy() if seen is None else seen | pres

    def finish(self) -> None:
        """Fold the present bits of all samples into per-row page counts."""
        for extent, bits in self._present_bits.items():
            rows = self._rows_of(extent, bits.size)
            self.present += np.bincount(rows, weights=np.bitwise_count(bits),
                                        minlength=self.rows).astype(np.int64)
        self._present_bits.clear()

    def row_of_vpn(self, vpn: np.ndarray) -> np.ndarray:
        """Rows of virtual page numbers inside the extents (others: -1)."""
        word = np.asarray(vpn, np.uint64) >> np.uint64(6)
        e = np.searchsorted(self.word_start, word, side="right") - 1
        ok = e >= 0
        e = np.maximum(e, 0)
        within = (word - self.word_start[e]).astype(np.int64)
        ok &= within < self.nwords[e]
        rows = (self.offset[e] + within) * self.rows // max(1, self.total_words)
        return np.where(ok, rows, -1)

    def place(self, vpn: np.ndarray, status: np.ndarray) -> None:
        """move_pages' answer for present pages: node id, or -errno."""
        rows = self.row_of_vpn(vpn)
        ok = rows >= 0
        rows, status = rows[ok], np.asarray(status)[ok]
        for s in np.unique(status).tolist():
            self.nodes[int(s)] = np.bincount(rows[status == s], minlength=self.rows)

    def share(self) -> np.ma.MaskedArray:
        """Accessed share per cell; rows with nothing resident are masked."""
        denom = self.present[:, None].astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.minimum(1.0, self.accessed / denom)
        return np.ma.masked_where(np.broadcast_to(denom == 0, frac.shape), frac)

    def row_address(self, row: int) -> int:
        """Virtual address at the start of ``row``."""
        w = -(-row * self.total_words // self.rows)  # first word of the row
        e = int(np.searchsorted(self.offset, w, side="right") - 1)
        e = min(e, len(self.nwords) - 1)
        return int(self.word_start[e] + np.uint64(w - self.offset[e])) * PAGES_PER_WORD << PAGE_SHIFT


def _size(nbytes: float) -> str:
    from tierd.units import format_size

    return format_size(int(nbytes))


def render(grid: AccessGrid, path: str, title: str, labels: list[tuple[int, str]] = (),
           fast: tuple[int, ...] = (), interval: float | None = None) -> None:
    """Write the heatmap PNG.  ``labels``: (start address, mapping name) of the mappings to
    name on the address axis; ``fast``: the fast node ids (the node strip colours them
    warm, slow nodes cool)."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "the heatmap needs matplotlib: pip install 'tierd[heatmap]' "
            "(or apt-get install python3-matplotlib)", name="matplotlib") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    share = grid.share()
    fig = plt.figure(figsize=(10, 8), dpi=110)
    gs = fig.add_gridspec(1, 3, width_ratios=[12, 1.4, 0.4], wspace=0.05)
    ax = fig.add_subplot(gs[0])
    cmap = matplotlib.colormaps["inferno"].with_extremes(bad="#d0d0d0")
    # square-root colour scale: a row where 2% of the pages are touched must not look idle
    im = ax.imshow(share, aspect="auto", interpolation="nearest", cmap=cmap,
                   norm=PowerNorm(0.5, vmin=0, vmax=1),
                   origin="upper", extent=(0.5, grid.samples + 0.5, grid.rows, 0))
    unit = f" ({interval:g} s apart)" if interval else ""
    ax.set_xlabel(f"sample{unit}; grey: nothing resident")
    row = _size(grid.pages_per_row * PAGE_SIZE)
    ax.set_ylabel(f"address (resident ranges end to end; one row = {row})")
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xticks(range(1, grid.samples + 1) if grid.samples <= 20
                  else np.linspace(1, grid.samples, 10).round().astype(int))

    # address axis: the named mappings where they start, plain addresses elsewhere
    ticks, names = [], []
    for addr, name in labels:
        r = int(grid.row_of_vpn(np.array([addr >> PAGE_SHIFT], np.uint64))[0])
        if r >= 0 and all(abs(r - t) > grid.rows / 40 for t in ticks):
            ticks.append(r)
            short = name if len(name) <= 28 else "..." + name[-25:]
            names.append(f"{short} {addr:#x}")
            ax.axhline(r, color="white", linewidth=0.6, linestyle=(0, (4, 4)))
    for r in np.linspace(0, grid.rows - 1, 9).astype(int).tolist():
        if all(abs(r - t) > grid.rows / 40 for t in ticks):
            ticks.append(r)
            names.append(f"{grid.row_address(r):#x}")
    ax.set_yticks(ticks, names, fontsize=7)
    cb = fig.colorbar(im, cax=fig.add_subplot(gs[2]))
    cb.set_label("share of the row's resident pages accessed (square-root scale)")

    # node strip: per row, the share of its present pages on each node, stacked
    ax2 = fig.add_subplot(gs[1], sharey=ax)
    node_ids = sorted(n for n in grid.nodes if n >= 0)
    other = sum((grid.nodes[n] for n in grid.nodes if n < 0), np.zeros(grid.rows, np.int64))
    warm = ["#d7301f", "#fc8d59", "#fdcc8a"]
    cool = ["#2b8cbe", "#7bccc4", "#bae4bc"]
    colours, left = [], np.zeros(grid.rows)
    denom = np.maximum(1, sum((grid.nodes[n] for n in grid.nodes), np.zeros(grid.rows, np.int64)))
    rows = np.arange(grid.rows) + 0.5
    for n in node_ids:
        c = (warm if n in fast else cool)[len([x for x in colours if x[1] == (n in fast)]) % 3]
        colours.append((n, n in fast))
        w = grid.nodes[n] / denom
        ax2.barh(rows, w, left=left, height=1.0, color=c, linewidth=0,
                 label=f"node {n} ({'fast' if n in fast else 'slow'})")
        left = left + w
    if other.any():
        ax2.barh(rows, other / denom, left=left, height=1.0, color="#999999", linewidth=0,
                 label="node unknown")
    ax2.set_xlim(0, 1)
    ax2.set_xticks([])
    ax2.set_xlabel("node")
    ax2.tick_params(axis="y", left=False, labelleft=False)
    if node_ids or other.any():
        ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.07), fontsize=7, frameon=False)
    ax.set_ylim(grid.rows, 0)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
