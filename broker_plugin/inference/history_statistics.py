"""Summary statistics of an object's photometric history rows: what a light-curve classifier measures.

A recurrent encoder can in principle learn amplitudes, colours, rise and decline times and the scatter
from one epoch to the next, but with a few thousand labelled objects it does not learn them well: the
light-curve trees reach far higher scores from exactly such statistics. :func:`history_statistics`
computes them from the rows of :func:`~broker_plugin.inference.history.history_features` inside the net
(no parameters, no extra input, so serving and training read them from the same rows), and the history
encoder reads them beside its GRU.

Per band (each of :data:`~broker_plugin.records.BANDS`), over the band's epochs:

- ``log1p(count) / 5``;
- max, min, mean and standard deviation of ``asinh(snr / 5)``; the fractions with signal-to-noise
  above 3 and below -3;
- max, mean, standard deviation, skewness and range of the peak-normalised flux;
- the von Neumann ratio of the peak-normalised flux (mean squared difference of successive epochs over
  the variance, as ``log1p``): small for a smooth light curve (an AGN's random walk, a supernova), about
  2 for a variable sampled slower than its period;
- max and mean of ``asinh(flux / 1000 nJy)`` (brightness, and colours by difference between bands).

Over all bands: ``log1p(detections) / 5`` and, as ``log1p(days) / 7``: the span of the detections, the
rise (first detection to the brightest epoch) and the decline (brightest epoch to the last detection),
the time since the brightest epoch, since the first detection and since the oldest epoch read; the
fraction of epochs with signal-to-noise below -3.
"""

from __future__ import annotations

import math

import torch

from broker_plugin.inference.history import (
    BAND_COLUMNS,
    DETECTED_COLUMN,
    PEAK_COLUMN,
    PHOTOMETRY_COLUMNS,
    TIME_COLUMNS,
    VALID_COLUMN,
)
from broker_plugin.records import BANDS

#: Statistics per band, and over all bands (see the module docstring).
PER_BAND = 15
GLOBAL = 8
#: Length of :func:`history_statistics`'s vector.
HISTORY_STATISTICS = PER_BAND * len(BANDS) + GLOBAL
#: ``asinh(snr / 5)`` at signal-to-noise 3: the photometry column stores that transform.
_SNR3 = math.asinh(3.0 / 5.0)
#: Bound on every statistic, so that one absurd epoch cannot swamp the head.
_CLIP = 8.0


def _masked_mean(x: torch.Tensor, m: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    return (x * m).sum(dim=1) / n


def _masked_extreme(x: torch.Tensor, m: torch.Tensor, largest: bool) -> torch.Tensor:
    fill = torch.finfo(x.dtype).min if largest else torch.finfo(x.dtype).max
    masked = torch.where(m > 0, x, torch.full_like(x, fill))
    out = masked.amax(dim=1) if largest else masked.amin(dim=1)
    return torch.where(m.sum(dim=1) > 0, out, torch.zeros_like(out))


def _days(column: torch.Tensor) -> torch.Tensor:
    """Invert the history rows' ``log1p(days) / 7`` time encoding."""
    return torch.expm1(7.0 * column)


def _encode_days(days: torch.Tensor) -> torch.Tensor:
    return torch.log1p(days.clamp(min=0.0)) / 7.0


def _per_band(rows: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``(B, bands, PER_BAND)`` statistics of each band's epochs."""
    m = valid[..., None] * rows[..., BAND_COLUMNS]  # (B, P, bands)
    n = m.sum(dim=1)  # (B, bands)
    n1 = n.clamp(min=1.0)
    flux_a = rows[..., PHOTOMETRY_COLUMNS.start, None].expand_as(m)
    snr_a = rows[..., PHOTOMETRY_COLUMNS.start + 2, None].expand_as(m)
    peak = rows[..., PEAK_COLUMN, None].expand_as(m)

    snr_mean = _masked_mean(snr_a, m, n1)
    snr_std = (_masked_mean((snr_a - snr_mean[:, None]) ** 2, m, n1)).sqrt()
    peak_mean = _masked_mean(peak, m, n1)
    centred = (peak - peak_mean[:, None]) * m
    peak_var = (centred**2).sum(dim=1) / n1
    peak_std = peak_var.sqrt()
    skew = (centred**3).sum(dim=1) / n1 / (peak_std**3 + 1e-3)
    peak_max = _masked_extreme(peak, m, largest=True)
    peak_min = _masked_extreme(peak, m, largest=False)

    # Von Neumann ratio: successive epochs of the same band. ``previous`` is each epoch's latest earlier
    # epoch of its band (rows are in time order), found with a running maximum of the band's positions.
    positions = torch.arange(rows.shape[1], device=rows.device).view(1, -1, 1).expand_as(m)
    marked = torch.where(m > 0, positions, torch.full_like(positions, -1))
    running = marked.cummax(dim=1).values
    previous = torch.cat((torch.full_like(running[:, :1], -1), running[:, :-1]), dim=1)
    pair = m * (previous >= 0).to(m.dtype)
    before = peak.gather(1, previous.clamp(min=0))
    n_pairs = pair.sum(dim=1)
    msd = ((peak - before) ** 2 * pair).sum(dim=1) / n_pairs.clamp(min=1.0)
    eta = torch.where(n_pairs > 1, torch.log1p(msd / (peak_var + 1e-4)), torch.zeros_like(msd))

    stats = [
        torch.log1p(n) / 5.0,
        _masked_extreme(snr_a, m, largest=True),
        _masked_extreme(snr_a, m, largest=False),
        snr_mean,
        snr_std,
        _masked_mean((snr_a > _SNR3).to(m.dtype), m, n1),
        _masked_mean((snr_a < -_SNR3).to(m.dtype), m, n1),
        peak_max,
        peak_mean,
        peak_std,
        skew,
        peak_max - peak_min,
        eta,
        _masked_extreme(flux_a, m, largest=True),
        _masked_mean(flux_a, m, n1),
    ]
    return torch.stack(stats, dim=-1)


def _global(rows: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``(B, GLOBAL)`` statistics over all bands."""
    ago = _days(rows[..., TIME_COLUMNS.start])
    since = _days(rows[..., TIME_COLUMNS.start + 1])
    detected = valid * rows[..., DETECTED_COLUMN]
    n_det = detected.sum(dim=1)
    n = valid.sum(dim=1).clamp(min=1.0)
    first_det = _masked_extreme(since, detected, largest=False)
    last_det = _masked_extreme(since, detected, largest=True)
    ago_first_det = _masked_extreme(ago, detected, largest=True)
    peak = torch.where(valid > 0, rows[..., PEAK_COLUMN], torch.full_like(valid, -1e4))
    at_peak = peak.argmax(dim=1, keepdim=True)
    t_peak = since.gather(1, at_peak).squeeze(1)
    ago_peak = ago.gather(1, at_peak).squeeze(1)
    has = (valid.sum(dim=1) > 0).to(rows.dtype)
    has_det = (n_det > 0).to(rows.dtype)
    snr_a = rows[..., PHOTOMETRY_COLUMNS.start + 2]
    stats = [
        torch.log1p(n_det) / 5.0,
        _encode_days(last_det - first_det) * has_det,
        _encode_days(t_peak - first_det) * has_det,
        _encode_days(last_det - t_peak) * has_det,
        _encode_days(ago_peak) * has,
        _encode_days(ago_first_det) * has_det,
        _masked_extreme(rows[..., TIME_COLUMNS.start], valid, largest=True),
        ((snr_a < -_SNR3).to(rows.dtype) * valid).sum(dim=1) / n,
    ]
    return torch.stack(stats, dim=-1)


def history_statistics(rows: torch.Tensor) -> torch.Tensor:
    """The summary statistics ``(B, HISTORY_STATISTICS)`` of history rows ``(B, P, F)``.

    Zero for an object without a valid row; every value is clipped to +-8.
    """
    valid = (rows[..., VALID_COLUMN] > 0).to(rows.dtype)
    per_band = _per_band(rows, valid).flatten(1)
    out = torch.cat((per_band, _global(rows, valid)), dim=1)
    return torch.nan_to_num(out, nan=0.0, posinf=_CLIP, neginf=-_CLIP).clamp(-_CLIP, _CLIP)
