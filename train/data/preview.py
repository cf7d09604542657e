"""Preview pictures (the only module that uses ``matplotlib``): frames over time per band + light curve.

One PNG per class from a simulated dataset: for the first object of that class, a row of frames per
band (time runs left to right, one colour scale per row, masked pixels grey) above its light curve
(noise-free difference flux as lines, forced PSF photometry with 1-sigma errors as points).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from broker_plugin.records import BANDS
from train.config import CLASSES
from train.data.shards import Sequence, ShardDataset

_COLOURS = {
    "u": "tab:purple",
    "g": "tab:green",
    "r": "tab:red",
    "i": "tab:orange",
    "z": "tab:brown",
    "y": "k",
}
MAX_COLUMNS = 12


def plot_sequence(seq: Sequence, path: Path, dpi: int = 90) -> Path:
    """Draw one object's frames and light curve into ``path`` (PNG at ``dpi``)."""
    present = [b for b in range(len(BANDS)) if np.any(seq.band == b)]
    fig = plt.figure(figsize=(MAX_COLUMNS * 0.9, len(present) * 0.95 + 3.2), dpi=dpi)
    grid = fig.add_gridspec(len(present) + 1, MAX_COLUMNS, height_ratios=[1] * len(present) + [3.2])
    cmap = mpl.colormaps["magma"].with_extremes(bad="0.6")
    for row, b in enumerate(present):
        idx = np.nonzero(seq.band == b)[0]
        idx = idx[np.linspace(0, len(idx) - 1, min(MAX_COLUMNS, len(idx))).round().astype(int)]
        vals = np.concatenate([seq.frames[i][seq.masks[i]] for i in idx] + [np.zeros(1)])
        lo, hi = np.percentile(vals, [1, 99.7])
        for col, i in enumerate(idx):
            ax = fig.add_subplot(grid[row, col])
            img = np.ma.masked_array(seq.frames[i], ~seq.masks[i])
            ax.imshow(img, origin="lower", cmap=cmap, vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(BANDS[b], rotation=0, labelpad=10, fontsize=11)
            if row == 0:
                ax.set_title(f"{seq.mjd[i] - seq.mjd[0]:.0f} d", fontsize=7)
    ax = fig.add_subplot(grid[-1, :])
    for b in present:
        sel = seq.band == b
        name = BANDS[b]
        ax.plot(seq.mjd[sel], seq.flux_true[sel], "-", color=_COLOURS[name], lw=1)
        ax.errorbar(
            seq.mjd[sel],
            seq.psf_flux[sel],
            seq.psf_flux_err[sel],
            fmt="o",
            ms=3,
            color=_COLOURS[name],
            label=name,
        )
    meta = seq.meta
    extra = f"z = {meta['redshift']:.3f}" if meta.get("redshift") is not None else ""
    if meta.get("period") is not None:
        extra = f"P = {meta['period']:.3f} d"
    ax.set_title(
        f"{meta['label']} ({meta['subtype']}, {'confirmed' if meta['confirmed'] else 'unconfirmed'}) "
        f"{extra}   diaObjectId {meta['diaObjectId']}",
        fontsize=10,
    )
    ax.set_xlabel("midpointMjdTai [MJD]")
    ax.set_ylabel("difference flux [nJy]")
    ax.axhline(0, color="0.5", lw=0.5)
    ax.legend(ncol=len(present), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_previews(dataset: str | Path, out_dir: str | Path) -> list[Path]:
    """One PNG per class (the first object of that class that has a significant detection)."""
    data = ShardDataset(dataset)
    written = []
    for cls in CLASSES:
        candidates = [i for i, m in enumerate(data.metadata) if m["label"] == cls and m["true_class"] == cls]
        best = next(
            (i for i in candidates if np.nanmax(np.abs(data[i].psf_flux / data[i].psf_flux_err)) > 15),
            candidates[0] if candidates else None,
        )
        if best is not None:
            written.append(plot_sequence(data[best], Path(out_dir) / f"preview_{cls.lower()}.png"))
    return written
