"""The state-store interface every backend implements.

Semantics (the contract tests check each):

- Objects are keyed by ``object_key`` (text: ``"<survey>:<diaObjectId>"``, see :func:`object_key`).
- :meth:`StateStore.add_frames` is idempotent by ``diaSourceId`` within an object: adding a frame twice
  (a redelivered message) stores it once and reports it as not new. It is atomic per call and durable
  when it returns (a kill -9 right after loses nothing).
- :meth:`StateStore.frames` returns an object's frames ordered by ``midpointMjdTai`` (ties by
  ``diaSourceId``), whatever order they arrived in, at most the newest ``max_frames_per_object``
  (older ones are pruned at write time).
- The token cache is only a cache: entries are keyed by (object, model version), may be missing at any
  time, and are dropped with the object's frames. Callers rebuild them from frames.
- :meth:`StateStore.expire` removes objects with no new frame for ``idle_seconds`` (wall clock of the
  last write), frames and cache alike, and returns how many it removed.
- Every frame read back passes :func:`broker_plugin.records.check_frame` (without a size: the store does
  not know the model's). A stored frame that does not (written by an older version, or bytes that no
  longer decode) is never returned: :meth:`StateStore.frames` skips it, logs it, reports it to the
  listeners of :meth:`StateStore.watch_invalid_frames` and deletes its row, since no version can use it.
  So ``n_frames`` and :meth:`StateStore.frame_count` count the frames stored and not yet found invalid:
  an invalid frame counts until the first read of its object meets it, never after (a redelivery of its
  alert then stores a fresh frame).
- Opening a store on something that is not a state database (an unknown URL scheme, a file that is not
  SQLite, a database whose tables of our names have other columns) raises
  :class:`~broker_plugin.exceptions.StateUrlError`; a closed store raises :class:`StateStoreClosedError`.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from broker_plugin.records import Frame

log = logging.getLogger(__name__)

#: Called with ``(object key, diaSourceId, why)`` for every invalid stored frame a read skips.
InvalidFrameListener = Callable[[str, int, str], None]


class StateStoreClosedError(RuntimeError):
    """The store was closed: nothing can be read or written (an infrastructure state, not bad input)."""


def object_key(survey: str, diaObjectId: int | str) -> str:
    """The store's key of an object: ``"rubin:1234"`` or ``"ztf:ZTF21acqeepb"``."""
    return f"{survey}:{diaObjectId}"


@dataclass(frozen=True, slots=True)
class AddResult:
    """What :meth:`StateStore.add_frames` did for one object.

    Attributes
    ----------
    new
        ``diaSourceId`` of the frames that were not stored before.
    n_frames
        Frames the object has after the call (after pruning).
    inserted_before_last
        ``True`` if a new frame is older than a frame already stored (out-of-order arrival): cached tokens
        computed before it no longer describe the sequence.
    last_before
        ``(midpointMjdTai, diaSourceId)`` of the newest frame stored before the call (None: none was).
        A cache of the object is current only if it ends with that frame.
    """

    new: tuple[int, ...]
    n_frames: int
    inserted_before_last: bool
    last_before: tuple[float, int] | None = None


class StateStore(abc.ABC):
    """Durable per-object frames plus a token cache. Implementations are safe to share between threads."""

    def watch_invalid_frames(self, listener: InvalidFrameListener) -> None:
        """Call ``listener(key, diaSourceId, why)`` for every invalid stored frame a read skips."""
        self._invalid_frame_listeners = [*getattr(self, "_invalid_frame_listeners", []), listener]

    def _report_invalid(self, key: str, invalid: Sequence[tuple[int, str]]) -> None:
        for source_id, why in invalid:
            log.warning("state: stored frame %s/%d is invalid, skipped and deleted: %s", key, source_id, why)
            for listener in getattr(self, "_invalid_frame_listeners", ()):
                listener(key, source_id, why)

    @abc.abstractmethod
    def add_frames(self, key: str, frames: list[Frame]) -> AddResult:
        """Store frames of one object, idempotently by ``diaSourceId``; durable on return."""

    def add_batch(self, items: Sequence[tuple[str, list[Frame]]]) -> list[AddResult]:
        """:meth:`add_frames` for several objects (one micro-batch), one result per item, in order.

        Each write is one durable commit (an fsync), which caps a writer at a few hundred calls per
        second; the backends override this to commit a whole batch at once, atomically. This default
        adds item by item.
        """
        return [self.add_frames(key, frames) for key, frames in items]

    @abc.abstractmethod
    def frames(self, key: str) -> list[Frame]:
        """The object's valid stored frames, oldest first (empty if unknown); invalid ones are dropped."""

    @abc.abstractmethod
    def frame_count(self, key: str) -> int:
        """How many frames the object has (0 if unknown)."""

    @abc.abstractmethod
    def get_cache(self, key: str, model_version: str) -> bytes | None:
        """The cached token blob of this object for this model version, if any."""

    @abc.abstractmethod
    def put_cache(self, key: str, model_version: str, blob: bytes) -> None:
        """Replace the object's cached token blob for this model version."""

    def put_caches(self, items: Sequence[tuple[str, str, bytes]]) -> None:
        """:meth:`put_cache` for several ``(key, model_version, blob)`` (one micro-batch).

        Backends override this to write the batch in one transaction; this default writes one by one.
        """
        for key, model_version, blob in items:
            self.put_cache(key, model_version, blob)

    @abc.abstractmethod
    def expire(self, idle_seconds: float) -> int:
        """Drop objects without a new frame for ``idle_seconds``; return how many were dropped."""

    @abc.abstractmethod
    def object_count(self) -> int:
        """Number of tracked objects."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
