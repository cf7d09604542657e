"""Training-time views of a sequence: growing prefixes, the serving window, and geometric flips.

The stream classifies an object after its first few frames, so training also shows the net a random
prefix (the first ``k`` frames). The view always ends in the window serving would use for that prefix
(the most recent whole chunks, :func:`~broker_plugin.inference.preprocess.window_start`), optionally
shortened to ``max_frames`` (a cost cap: it looks like a rolled window). Flips and quarter turns are the
same for every frame of the sequence (the authors' augmentation, spec 8 item 2, without their +-15
degree resampling, which interpolates masked pixels); evaluation never augments (spec 8 item 9).

The photometric history is randomised too (:func:`history_view`), for what differs between surveys and
brokers: how far before the first alert forced photometry reaches, forced epochs lost, and streams that
relay only the earlier detections.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from broker_plugin.inference.preprocess import ModelInput, window_start
from broker_plugin.records import PhotometryHistory

#: Probability that a training history keeps only the detections (a stream without forced photometry).
DETECTIONS_ONLY_PROBABILITY = 0.1
#: Largest fraction of forced (undetected) epochs a training history loses at random.
MAX_FORCED_DROPOUT = 0.3


def serving_window(inp: ModelInput, chunk_size: int, max_chunks: int) -> ModelInput:
    """Return the frames the service would feed the net for this history."""
    return inp[window_start(len(inp), chunk_size, max_chunks) :]


def random_view(
    inp: ModelInput,
    rng: np.random.Generator,
    *,
    chunk_size: int,
    max_chunks: int,
    max_frames: int,
    min_prefix: int,
    prefix_probability: float,
    augment: bool,
) -> ModelInput:
    """Return a random training view of ``inp`` (see module docstring)."""
    n = len(inp)
    if n > min_prefix and rng.random() < prefix_probability:
        inp = inp[: int(rng.integers(min_prefix, n + 1))]
    chunks = max(1, min(max_chunks, max_frames // chunk_size))
    inp = serving_window(inp, chunk_size, chunks)
    if not augment:
        return inp
    x, aux = inp.x, inp.aux
    k = int(rng.integers(4))
    if k:
        x = np.rot90(x, k, axes=(-2, -1))
        aux = None if aux is None else np.rot90(aux, k, axes=(-2, -1))
    if rng.random() < 0.5:
        x = x[..., ::-1]
        aux = None if aux is None else aux[..., ::-1]
    # The science and template planes turn with the difference: one sky, one orientation.
    aux = None if aux is None else np.ascontiguousarray(aux)
    return dataclasses.replace(inp, x=np.ascontiguousarray(x), aux=aux)


def history_view(
    history: PhotometryHistory, frame_mjd: np.ndarray, rng: np.random.Generator
) -> PhotometryHistory:
    """Return a random training view of an object's photometric history (see module docstring).

    The precovery reach before the first frame (``frame_mjd[0]``) shrinks to a uniform 0..100 % of
    what ``history`` holds; each undetected epoch is dropped with a probability drawn uniformly up to
    :data:`MAX_FORCED_DROPOUT`; with :data:`DETECTIONS_ONLY_PROBABILITY` only the detections stay.
    Detections are never dropped: every alert carries its own.
    """
    t = history.midpointMjdTai
    if not len(t) or not len(frame_mjd):
        return history
    first = float(frame_mjd[0])
    reach = max(0.0, first - float(t.min()))
    keep = t >= first - reach * rng.random()
    forced = ~history.detected
    if rng.random() < DETECTIONS_ONLY_PROBABILITY:
        keep &= ~forced
    else:
        keep &= ~(forced & (rng.random(len(t)) < rng.random() * MAX_FORCED_DROPOUT))
    return PhotometryHistory(
        t[keep], history.band[keep], history.psfFlux[keep], history.psfFluxErr[keep], history.detected[keep]
    )
