"""Training-time views of a sequence: growing prefixes, the serving window, and geometric flips.

The stream classifies an object after its first few frames, so training also shows the net a random
prefix (the first ``k`` frames). The view always ends in the window serving would use for that prefix
(the most recent whole chunks, :func:`~broker_plugin.inference.preprocess.window_start`), optionally
shortened to ``max_frames`` (a cost cap: it looks like a rolled window). Flips and quarter turns are the
same for every frame of the sequence (the authors' augmentation, spec 8 item 2, without their +-15
degree resampling, which interpolates masked pixels); evaluation never augments (spec 8 item 9).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from broker_plugin.inference.preprocess import ModelInput, window_start


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
