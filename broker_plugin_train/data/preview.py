"""Preview pictures (the only module that uses ``matplotlib``): frames over time per band + light curve.

One PNG per class from a simulated dataset: for the first object of that class, per band a row of
science, template and difference frames (time runs left to right; science and template share one
colour scale per band, the difference has its own; masked pixels grey) above its light curve
(noise-free difference flux as lines, forced PSF photometry with 1-sigma errors as points). A dataset
without science and template frames shows the difference rows only.

``python -m broker_plugin_train.data.preview [--objects 64] [--classes SNIa] [--out docs/img]`` simulates the
first objects of the default config into a temporary folder and draws the previews of the documentation.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence as Seq
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from broker_plugin.records import BANDS
from broker_plugin_train.config import CLASSES, load_config
from broker_plugin_train.data.population import catalogue
from broker_plugin_train.data.shards import Sequence, ShardDataset

_COLOURS = {
    "u": "tab:purple",
    "g": "tab:green",
    "r": "tab:red",
    "i": "tab:orange",
    "z": "tab:brown",
    "y": "k",
}
MAX_COLUMNS = 12
ROOT = Path(__file__).resolve().parents[2]


def _scale(images: list[np.ndarray], masks: list[np.ndarray]) -> tuple[float, float]:
    vals = np.concatenate([im[m] for im, m in zip(images, masks, strict=True)] + [np.zeros(1)])
    lo, hi = np.percentile(vals, [1, 99.7])
    return float(lo), float(hi)


def plot_sequence(seq: Sequence, path: Path, dpi: int = 72) -> Path:
    """Draw one object's frames and light curve into ``path`` (PNG at ``dpi``)."""
    present = [b for b in range(len(BANDS)) if np.any(seq.band == b)]
    planes = [("diff", seq.frames, seq.masks)]
    if seq.science is not None and seq.template is not None and seq.template_masks is not None:
        planes = [("sci", seq.science, seq.masks), ("tmpl", seq.template, seq.template_masks), *planes]
    n_rows = len(present) * len(planes)
    fig = plt.figure(figsize=(MAX_COLUMNS * 0.85 + 0.5, n_rows * 0.85 + 3.2), dpi=dpi)
    # An empty row between the frames and the light curve leaves room for the light curve's title.
    grid = fig.add_gridspec(n_rows + 2, MAX_COLUMNS, height_ratios=[1] * n_rows + [0.5, 3.6], hspace=0.12)
    cmap = mpl.colormaps["magma"].with_extremes(bad="0.6")
    for k, b in enumerate(present):
        idx = np.nonzero(seq.band == b)[0]
        idx = idx[np.linspace(0, len(idx) - 1, min(MAX_COLUMNS, len(idx))).round().astype(int)]
        # Science and template share a scale (the same sky, f(t) against f_ref); the difference has its own.
        static = _scale(
            [p[i] for _, p, _ in planes[:-1] for i in idx], [m[i] for _, _, m in planes[:-1] for i in idx]
        )
        for j, (name, images, masks) in enumerate(planes):
            row = k * len(planes) + j
            lo, hi = _scale([images[i] for i in idx], [masks[i] for i in idx]) if name == "diff" else static
            for col, i in enumerate(idx):
                ax = fig.add_subplot(grid[row, col])
                ax.imshow(
                    np.ma.masked_array(images[i], ~masks[i]), origin="lower", cmap=cmap, vmin=lo, vmax=hi
                )
                ax.set_xticks([])
                ax.set_yticks([])
                if col == 0:
                    ax.set_ylabel(f"{BANDS[b]} {name}", rotation=0, labelpad=18, fontsize=9)
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
    fig.subplots_adjust(left=0.09, right=0.99, top=0.98, bottom=0.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.canvas.draw()
    rgb = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())).convert("RGB")
    plt.close(fig)
    # A 256-colour palette keeps the colour map and the line colours, at a third of the RGB file's size.
    rgb.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    return path


def write_previews(dataset: str | Path, out_dir: str | Path, classes: Seq[str] = CLASSES) -> list[Path]:
    """One PNG per class (the first object of that class that has a significant detection)."""
    data = ShardDataset(dataset)
    written = []
    for cls in classes:
        candidates = [i for i, m in enumerate(data.metadata) if m["label"] == cls and m["true_class"] == cls]
        best = next(
            (i for i in candidates if np.nanmax(np.abs(data[i].psf_flux / data[i].psf_flux_err)) > 15),
            candidates[0] if candidates else None,
        )
        if best is not None:
            written.append(plot_sequence(data[best], Path(out_dir) / f"preview_{cls.lower()}.png"))
    return written


def main(argv: Seq[str] | None = None) -> None:
    """Draw the documentation's previews from the first objects of a config."""
    from broker_plugin_train.data import shards
    from broker_plugin_train.data.simulate import simulate_objects

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "--config", type=Path, default=ROOT / "broker_plugin_train" / "configs" / "default.toml"
    )
    parser.add_argument("--objects", type=int, default=64, help="Simulate the first N objects.")
    parser.add_argument("--classes", nargs="+", default=["SNIa"], choices=CLASSES)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args(argv)
    config = load_config(args.config).simulation
    arrays, objects = simulate_objects(config, catalogue(config)[: args.objects])
    with tempfile.TemporaryDirectory() as tmp:
        shards.write_shard(Path(tmp) / "shard-00000", arrays, objects)
        planes = shards.PLANES if config.render.science_template else shards.PLANES[:1]
        manifest = {"format": shards.FORMAT, "format_version": shards.FORMAT_VERSION, "planes": list(planes)}
        (Path(tmp) / "manifest.json").write_text(
            shards.dumps(manifest | {"shards": [{"name": "shard-00000"}]})
        )
        for path in write_previews(tmp, args.out, args.classes):
            print(f"preview: {path}")


if __name__ == "__main__":
    main()
