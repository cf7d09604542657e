"""What both stores do before and after SQL: frames to rows, and the outcome of one ``add_frames``."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from broker_plugin.exceptions import InvalidFrameError
from broker_plugin.records import Frame, check_frame
from broker_plugin.state.base import AddResult
from broker_plugin.state.sequence import decode_frame, encode_frame


@dataclass(frozen=True, slots=True)
class FrameRow:
    """One frame as a store row: its ordering key and its bytes."""

    diaSourceId: int
    midpointMjdTai: float
    blob: bytes

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
            rows[source_id] = FrameRow(source_id, float(frame.midpointMjdTai), encode_frame(frame))
    return list(rows.values())


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
        new=tuple(row.diaSourceId for row in kept), n_frames=n_frames, inserted_before_last=before_last
    )


def read_frames(rows: Iterable[tuple[int, float, bytes]]) -> tuple[list[Frame], list[tuple[int, str]]]:
    """Decode and check stored ``(diaSourceId, mjd, blob)`` rows.

    Returns
    -------
    frames
        The frames that decode, keep every invariant of :func:`~broker_plugin.records.check_frame` and
        match their row's ``diaSourceId`` and time, in row order.
    invalid
        ``(diaSourceId, why)`` of every other row.
    """
    frames: list[Frame] = []
    invalid: list[tuple[int, str]] = []
    for source_id, mjd, blob in rows:
        try:
            # FrameFormatError and UnicodeDecodeError (a band that is not UTF-8) are ValueErrors.
            frame = check_frame(decode_frame(blob))
            if frame.diaSourceId != source_id or frame.midpointMjdTai != mjd:
                raise InvalidFrameError("frame bytes do not match their row's diaSourceId and time")
        except (ValueError, InvalidFrameError) as exc:
            invalid.append((int(source_id), f"{type(exc).__name__}: {exc}"))
            continue
        frames.append(frame)
    return frames, invalid
