"""Frozen-backbone features of every object at growing prefixes, from one front-end pass.

The front end sees each chunk on its own (the property incremental serving relies on), so the tokens of
an object's whole history are computed once and any prefix of whole chunks is a slice of them: the
features after ``k`` frames are ``forward_blocks`` over the serving window of the first ``k // chunk``
tokens. This serves stage 2 (a new head on frozen features: growing-prefix training at the cost of one
pass) and the early-classification curve. A prefix at least as long as the object is its whole history
(the last chunk possibly partial), exactly what the service classifies. Nets that pad every window to a
fixed length (the authors' unmasked net) take the slower route through ``forward`` on each prefix.
Tested equal to ``net(x, band)`` on collated windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from broker_plugin.inference.preprocess import ModelInput, collate_context
from broker_plugin.progress import progress
from broker_plugin_train.augment import serving_window
from broker_plugin_train.loop import batch_tensors, head_input, net_device


def prefix_windows(
    n_frames: int, prefixes: Sequence[int], chunk_size: int, max_chunks: int
) -> list[tuple[int, int]]:
    """Token ranges ``(start, end)`` of the serving window after each prefix (then the whole history)."""
    n_chunks = -(-n_frames // chunk_size)
    ends = [n_chunks if p >= n_frames else max(1, p // chunk_size) for p in prefixes] + [n_chunks]
    return [(max(0, e - max_chunks), e) for e in ends]


def _tokens(net: nn.Module, inputs: Sequence[ModelInput]) -> tuple[torch.Tensor, torch.Tensor]:
    cs = net.chunk_size
    longest = max(len(i) for i in inputs)
    n_chunks = -(-longest // cs)
    x = torch.zeros(len(inputs), n_chunks * cs, *inputs[0].x.shape[1:])
    band = torch.zeros(len(inputs), n_chunks * cs, dtype=torch.int64)
    for k, inp in enumerate(inputs):
        x[k, : len(inp)] = torch.from_numpy(inp.x)
        band[k, : len(inp)] = torch.from_numpy(inp.band)
    device = net_device(net)
    x, band = x.to(device), band.to(device)
    xc = x.reshape(-1, cs, *x.shape[2:])
    bc = band.reshape(-1, cs)
    valid = (bc != 0).any(dim=1)
    extras: tuple[torch.Tensor, ...] = ()
    if getattr(net, "uses_context", False):
        aux, context = collate_context(inputs, frames=n_chunks * cs, stamp=inputs[0].x.shape[-1])
        extras = (
            torch.from_numpy(aux).to(device).reshape(-1, cs, *aux.shape[2:])[valid],
            torch.from_numpy(context).to(device).reshape(-1, cs, context.shape[-1])[valid],
        )
    tokens = xc.new_zeros(len(xc), *net.token_shape)
    tokens[valid] = net.embed_chunks(xc[valid], bc[valid], *extras).to(tokens.dtype)
    return tokens.view(len(inputs), n_chunks, *net.token_shape), valid.view(len(inputs), n_chunks)


@torch.inference_mode()
def prefix_features(
    net: nn.Module | Sequence[nn.Module],
    inputs: Sequence[ModelInput],
    prefixes: Sequence[int],
    batch_size: int = 16,
    label: str = "features",
) -> np.ndarray:
    """Pre-logit features ``(n, len(prefixes) + 1, F)`` after each prefix and for the whole history.

    Parameters
    ----------
    net
        Put in eval mode (BatchNorm uses its frozen running statistics). A sequence of nets that share
        one backbone (:func:`~broker_plugin.inference.ensemble.backbone_groups`: they differ in their
        heads and history layers only) gives ``(nets, n, len(prefixes) + 1, F)``: the front end and the
        blocks run once, with the first net's weights, and each net's head reads them.
    inputs
        Preprocessed objects (whole histories).
    prefixes
        Frames seen; rounded down to whole chunks below the object's length.
    batch_size
        Objects per front-end pass.
    label
        Name on the progress line.
    """
    nets = [net] if isinstance(net, nn.Module) else list(net)
    for n in nets:
        n.eval()
    first = nets[0]
    out: np.ndarray | None = None
    bar = progress(total=len(inputs), desc=label, unit=" objects", leave=False)
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = [inputs[i] for i in idx]
        if first.pad_window:
            feats = np.stack([_slow_prefix_features(n, batch, prefixes) for n in nets])
        else:
            tokens, valid = _tokens(first, batch)
            ranges = [prefix_windows(len(b), prefixes, first.chunk_size, first.max_chunks) for b in batch]
            views: list[list[torch.Tensor] | None] = []
            for v in range(len(prefixes) + 1):
                if v < len(prefixes) and all(r[v] == r[-1] for r in ranges):
                    # Every object of the batch is shorter than this prefix: its whole-history window.
                    views.append(None)
                    continue
                length = max(r[v][1] - r[v][0] for r in ranges)
                win = tokens.new_zeros(len(batch), length, *first.token_shape)
                mask = torch.zeros(len(batch), length, dtype=torch.bool, device=win.device)
                for k, r in enumerate(ranges):
                    lo, hi = r[v]
                    win[k, : hi - lo] = tokens[k, lo:hi]
                    mask[k, : hi - lo] = valid[k, lo:hi]
                head = {}
                if getattr(first, "uses_history", False):
                    # The rows of the window's last frame: the output after this prefix.
                    rows = np.stack(
                        [_rows_at(b, r[v], first.chunk_size) for r, b in zip(ranges, batch, strict=True)]
                    )
                    head["history"] = torch.from_numpy(rows).to(win.device)
                blocks = first.forward_blocks(win, mask)
                views.append([n.forward_head(blocks, mask, pre_logits=True, **head).float() for n in nets])
            whole = views[-1]
            assert whole is not None  # noqa: S101 - the whole-history view is always computed
            feats = np.stack([
                torch.stack([(whole if f is None else f)[m] for f in views], dim=1).cpu().numpy()
                for m in range(len(nets))
            ])  # fmt: skip
        if out is None:
            out = np.zeros((len(nets), len(inputs), *feats.shape[2:]), np.float32)
        out[:, idx] = feats
        bar.update(len(idx))
    bar.close()
    assert out is not None  # noqa: S101 - inputs is never empty here
    return out[0] if isinstance(net, nn.Module) else out


def output_frame(window: tuple[int, int], n_frames: int, chunk_size: int) -> int:
    """Index of the frame whose output the token ``window`` of an ``n_frames``-frame object is (its last)."""
    return min(window[1] * chunk_size, n_frames) - 1


def _rows_at(inp: ModelInput, window: tuple[int, int], chunk_size: int) -> np.ndarray:
    """The history rows of the output at the last frame of the token ``window`` of ``inp``."""
    assert inp.history is not None  # noqa: S101 - only called for nets that read the history
    return inp.history[output_frame(window, len(inp), chunk_size)]


def prefix_history_rows(net: nn.Module, inputs: Sequence[ModelInput], prefixes: Sequence[int]) -> np.ndarray:
    """History rows ``(n, len(prefixes) + 1, P, F)`` of the output after each prefix and the whole history.

    The same outputs as :func:`prefix_features`' views, for a stage 2 that trains the history encoder.
    """
    return np.stack([
        np.stack([
            _rows_at(inp, window, net.chunk_size)
            for window in prefix_windows(len(inp), prefixes, net.chunk_size, net.max_chunks)
        ])
        for inp in inputs
    ])  # fmt: skip


def _slow_prefix_features(net: nn.Module, batch: Sequence[ModelInput], prefixes: Sequence[int]) -> np.ndarray:
    feats = []
    for p in [*prefixes, None]:
        views = [
            serving_window(
                b if p is None or p >= len(b) else b[: max(1, p // net.chunk_size) * net.chunk_size],
                net.chunk_size,
                net.max_chunks,
            )
            for b in batch
        ]
        feats.append(head_input(net, batch_tensors(net, views)).float())
    return torch.stack(feats, dim=1).cpu().numpy()


@torch.inference_mode()
def head_probs(head: nn.Module, features: np.ndarray) -> np.ndarray:
    """Softmax of ``head`` (eval mode) over features ``(..., F)``."""
    head.eval()
    flat = torch.from_numpy(features.reshape(-1, features.shape[-1])).to(net_device(head))
    return head(flat).float().softmax(-1).cpu().numpy().reshape(*features.shape[:-1], -1)
