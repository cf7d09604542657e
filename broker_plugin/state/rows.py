"""What both stores do before and after SQL: frames to rows, and the outcome of one ``add_frames``.

A frame's row holds the frame with its template by digest (:func:`~.sequence.encode_frame_parts`); the
template blob goes to the object's ``templates`` table, once per digest, and a read joins it back. So a
row read back is ``(diaSourceId, mjd, blob, template blob or None)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from broker_plugin.exceptions import InvalidFrameError
from broker_plugin.records import Frame, check_frame
from broker_plugin.state.base import AddResult
from broker_plugin.state.sequence import decode_frame, encode_frame_parts


@dataclass(frozen=True, slots=True)
class FrameRow:
    """One frame as a store row: its ordering key, its bytes and its template, stored apart.

    Attributes
    ----------
    diaSourceId, midpointMjdTai
        The row's key within the object and its position in time.
    blob
        The frame, its template by digest.
    template_digest, template_blob
        The template's digest (the row's reference, ``None`` without a template) and its bytes (a row of
        the object's ``templates`` table, shared by every frame of that digest).
    """

    diaSourceId: int
    midpointMjdTai: float
    blob: bytes
    template_digest: bytes | None = None
    template_blob: bytes | None = None

    @property
    def order(self) -> tuple[float, int]:
        """Position in the object's sequence (time, ties by id)."""
        return (self.midpointMjdTai, self.diaSourceId)


def to_rows(frames: Iterable[Frame]) -> list[FrameRow]:
    """Encode frames, first occurrence of each ``diaSourceId`` kept (a batch may repeat a redelivery).

    Raises
    ------
    ValueError
        If a frame's ``midpointMjdTai`` is not finite: it could not be ordered.
    """
    rows: dict[int, FrameRow] = {}
    for frame in frames:
        if not math.isfinite(frame.midpointMjdTai):
            raise ValueError(f"diaSourceId {frame.diaSourceId}: midpointMjdTai {frame.midpointMjdTai}")
        source_id = int(frame.diaSourceId)
        if source_id not in rows:
            encoded = encode_frame_parts(frame)
            rows[source_id] = FrameRow(
                source_id, float(frame.midpointMjdTai), encoded.blob, encoded.template_digest,
                encoded.template_blob,
            )  # fmt: skip
    return list(rows.values())


def templates_of(rows: Iterable[FrameRow], inserted: set[int]) -> list[tuple[bytes, bytes]]:
    """``(digest, template blob)`` of the ``inserted`` rows, each digest once (what the insert must add)."""
    out: dict[bytes, bytes] = {}
    for row in rows:
        if row.diaSourceId in inserted and row.template_digest is not None and row.template_blob is not None:
            out.setdefault(row.template_digest, row.template_blob)
    return list(out.items())


def add_result(
    rows: list[FrameRow], inserted: set[int], pruned: set[int], last_before: tuple[float, int] | None,
    n_frames: int,
) -> AddResult:  # fmt: skip
    """The result of one ``add_frames``.

    A frame inserted and pruned in the same call (older than the newest ``max_frames_per_object``, e.g.
    a late redelivery of a pruned frame) is not reported as new: it is not stored and changes nothing.

    Parameters
    ----------
    rows
        The call's frames (from :func:`to_rows`), in call order.
    inserted
        ``diaSourceId`` of the rows the insert actually added.
    pruned
        ``diaSourceId`` the pruning removed in this call.
    last_before
        Order key of the newest frame stored before the call, ``None`` if there was none.
    n_frames
        Frames the object has after the call.
    """
    kept = [row for row in rows if row.diaSourceId in inserted and row.diaSourceId not in pruned]
    before_last = last_before is not None and any(row.order < last_before for row in kept)
    return AddResult(
        new=tuple(row.diaSourceId for row in kept), n_frames=n_frames, inserted_before_last=before_last,
        last_before=None if last_before is None else (float(last_before[0]), int(last_before[1])),
    )  # fmt: skip


def read_frames(
    rows: Iterable[tuple[int, float, bytes, bytes | None]],
) -> tuple[list[Frame], list[tuple[int, str]]]:
    """Decode and check stored ``(diaSourceId, mjd, blob, template blob)`` rows.

    Returns
    -------
    frames
        The frames that decode (with the template their digest names, which must be stored and match),
        keep every invariant of :func:`~broker_plugin.records.check_frame` (science and template planes
        included) and match their row's ``diaSourceId`` and time, in row order.
    invalid
        ``(diaSourceId, why)`` of every other row.
    """
    frames: list[Frame] = []
    invalid: list[tuple[int, str]] = []
    for source_id, mjd, blob, template in rows:
        try:
            # FrameFormatError and UnicodeDecodeError (a band that is not UTF-8) are ValueErrors.
            frame = check_frame(decode_frame(blob, template))
            if frame.diaSourceId != source_id or frame.midpointMjdTai != mjd:
                raise InvalidFrameError("frame bytes do not match their row's diaSourceId and time")
        except (ValueError, InvalidFrameError) as exc:
            invalid.append((int(source_id), f"{type(exc).__name__}: {exc}"))
            continue
        frames.append(frame)
    return frames, invalid
