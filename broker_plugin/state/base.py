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
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from broker_plugin.records import Frame


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
    """

    new: tuple[int, ...]
    n_frames: int
    inserted_before_last: bool


class StateStore(abc.ABC):
    """Durable per-object frames plus a token cache. Implementations are safe to share between threads."""

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
        """The object's stored frames, oldest first (empty list if unknown)."""

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
