"""The photometric history of an object as the net reads it: one feature row per earlier epoch.

An alert carries the photometry of its object's earlier epochs (Rubin ``prvDiaForcedSources`` and
``prvDiaSources``, ZTF ``prv_candidates`` and ``fp_hists``;
:class:`~broker_plugin.records.PhotometryHistory`).
The forced photometry covers every visit, detected or not: the decline below the alert threshold, the
flat baseline of a variable star, the colours at epochs where nothing alerted. The image sequence never
shows those epochs, because only detections raise alerts. :func:`history_features` turns such a history,
plus the alert's own detection, into the rows the net's history encoder reads, relative to the time of
the output ("now"), so that training (which builds the history from the simulated epochs) and serving
(which reads it from the alert) share one encoding.

Only epochs up to "now" are read, at most :data:`HISTORY_HORIZON_DAYS` before it (Rubin sends 12
months), the most recent :data:`HISTORY_POINTS` of them: a history never lets an output see later
observations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from broker_plugin.inference.errors import InferenceInputError
from broker_plugin.inference.preprocess import ModelInput, photometry_features
from broker_plugin.records import BANDS, Frame, PhotometryHistory

#: Epochs the net reads per output, the most recent first kept: about two seasons of a 3-day cadence.
HISTORY_POINTS = 128
#: Oldest epoch read, in days before the output's time (Rubin's ``prvDiaForcedSources`` cover 12 months).
HISTORY_HORIZON_DAYS = 365.0
#: Slack for "up to now" [days]: the alert's own epoch and a forced source of the same visit compare equal.
NOW_TOLERANCE_DAYS = 1e-5
#: Columns of a feature row, in order (see :func:`history_features`).
VALID_COLUMN = 0
TIME_COLUMNS = slice(1, 4)
BAND_COLUMNS = slice(TIME_COLUMNS.stop, TIME_COLUMNS.stop + len(BANDS))
PHOTOMETRY_COLUMNS = slice(BAND_COLUMNS.stop, BAND_COLUMNS.stop + 4)
DETECTED_COLUMN = PHOTOMETRY_COLUMNS.stop
PEAK_COLUMN = DETECTED_COLUMN + 1
HISTORY_FEATURES = PEAK_COLUMN + 1


def with_detection(
    history: PhotometryHistory | None, mjd: float, band: str, flux: float | None, flux_err: float | None
) -> PhotometryHistory:
    """``history`` plus the alert's own detection (kept only if its photometry is well formed).

    The alert's own epoch is not part of what it carries about earlier epochs; the output at that alert
    reads both.
    """
    base = history if history is not None else PhotometryHistory.empty()
    if flux is None or flux_err is None or band not in BANDS:
        return base
    point = PhotometryHistory.from_points([mjd], [BANDS.index(band)], [flux], [flux_err], [True])
    if not len(point):
        return base
    return PhotometryHistory(
        np.concatenate((base.midpointMjdTai, point.midpointMjdTai)),
        np.concatenate((base.band, point.band)),
        np.concatenate((base.psfFlux, point.psfFlux)),
        np.concatenate((base.psfFluxErr, point.psfFluxErr)),
        np.concatenate((base.detected, point.detected)),
    )


def history_features(
    history: PhotometryHistory | None, now: float, max_points: int = HISTORY_POINTS
) -> np.ndarray:
    """Encode the epochs of ``history`` up to ``now`` [MJD] as rows ``(max_points, HISTORY_FEATURES)``.

    Kept: epochs with ``now - HISTORY_HORIZON_DAYS <= t <= now`` (plus :data:`NOW_TOLERANCE_DAYS`), the
    most recent ``max_points``, in time order; the rows after them are zero (``valid`` 0). Columns:

    - ``valid``: 1 for an epoch;
    - ``log1p(now - t) / 7``, ``log1p(t - t_first) / 7`` (``t_first``: the oldest kept epoch) and
      ``log1p(t - t_previous) / 7`` (0 for the first): how long ago, where in the kept history, and the
      gap since the epoch before (7 ~ log of 1,000 days);
    - the band as one-hot over :data:`~broker_plugin.records.BANDS`;
    - :func:`~broker_plugin.inference.preprocess.photometry_features` of the flux and error (asinh of
      flux and error in units of 1,000 nJy, asinh of the signal-to-noise / 5, present);
    - ``detected``: the epoch was a detection (it raised an alert);
    - the flux over the largest ``|flux|`` of the kept detections (or of all kept epochs when none is a
      detection): the light curve's shape whatever its distance and the survey's zero point.
    """
    out = np.zeros((max_points, HISTORY_FEATURES), np.float32)
    if history is None or not len(history) or not math.isfinite(now):
        return out
    t = history.midpointMjdTai
    keep = np.flatnonzero((t <= now + NOW_TOLERANCE_DAYS) & (t >= now - HISTORY_HORIZON_DAYS))
    if not len(keep):
        return out
    keep = keep[np.argsort(t[keep], kind="stable")][-max_points:]
    n = len(keep)
    t_kept = t[keep]
    flux, err = history.psfFlux[keep], history.psfFluxErr[keep]
    detected = history.detected[keep]
    out[:n, VALID_COLUMN] = 1.0
    out[:n, TIME_COLUMNS.start] = np.log1p(np.clip(now - t_kept, 0.0, None)) / 7.0
    out[:n, TIME_COLUMNS.start + 1] = np.log1p(t_kept - t_kept[0]) / 7.0
    out[1:n, TIME_COLUMNS.start + 2] = np.log1p(np.diff(t_kept)) / 7.0
    out[np.arange(n), BAND_COLUMNS.start + history.band[keep].astype(np.int64)] = 1.0
    out[:n, PHOTOMETRY_COLUMNS] = photometry_features(flux, err)
    out[:n, DETECTED_COLUMN] = detected
    reference = np.abs(flux[detected]) if detected.any() else np.abs(flux)
    peak = float(reference.max(initial=0.0))
    if peak > 0:
        out[:n, PEAK_COLUMN] = np.clip(flux / peak, -4.0, 4.0)
    return out


def frame_history_rows(frames: Sequence[Frame], max_points: int = HISTORY_POINTS) -> np.ndarray:
    """The history rows ``(n, max_points, HISTORY_FEATURES)`` of the output at each of ``frames``.

    Frame ``k``'s rows read what its own alert carried (``frame.history``) plus its own detection, up to
    its own time: the output of an alert never depends on another alert's history, whatever batch the
    two share.
    """
    rows = np.zeros((len(frames), max_points, HISTORY_FEATURES), np.float32)
    for k, f in enumerate(frames):
        points = with_detection(f.history, f.midpointMjdTai, f.band, f.psfFlux, f.psfFluxErr)
        rows[k] = history_features(points, f.midpointMjdTai, max_points)
    return rows


def collate_history(inputs: Sequence[ModelInput]) -> np.ndarray:
    """The history rows ``(B, P, F)`` of the output at the last frame of each input."""
    if any(i.history is None or not len(i) for i in inputs):
        raise InferenceInputError("an input was preprocessed without its photometric history")
    return np.stack([i.history[-1] for i in inputs])  # type: ignore[index]
