"""What the service keeps per object beside its frames, as one blob in the store's token cache.

The model's incremental cache plus the (time, band) of the frames in its window, so an output can say
which frames it used without reading them back. Only a cache: it is rebuilt from the frames.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from broker_plugin.inference.errors import CacheError
from broker_plugin.inference.incremental import ObjectCache

_MAGIC = b"BPOT"
_HEADER = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class ObjectTrack:
    """An object's incremental cache and the ``(midpointMjdTai, band)`` of its most recent frames.

    Attributes
    ----------
    cache
        The model's incremental cache.
    recent
        ``(midpointMjdTai, band)`` of the last frames, oldest first (at least a window's worth).
    """

    cache: ObjectCache
    recent: tuple[tuple[float, str], ...]

    def to_bytes(self) -> bytes:
        """Serialise (JSON header of the recent frames, then the cache's own bytes)."""
        header = json.dumps([[mjd, band] for mjd, band in self.recent]).encode()
        return _MAGIC + _HEADER.pack(len(header)) + header + self.cache.to_bytes()

    @classmethod
    def from_bytes(cls, blob: bytes, model_id: str) -> ObjectTrack | None:
        """Parse :meth:`to_bytes`; ``None`` if corrupt or of another model (the caller rebuilds)."""
        try:
            if blob[:4] != _MAGIC:
                return None
            (length,) = _HEADER.unpack_from(blob, 4)
            recent = tuple((float(m), str(b)) for m, b in json.loads(blob[8 : 8 + length]))
            cache = ObjectCache.from_bytes(blob[8 + length :], model_id=model_id)
        except (CacheError, ValueError, struct.error, TypeError):
            return None
        return cls(cache, recent)


def window_meta(recent: Sequence[tuple[float, str]], n_frames: int) -> tuple[float, tuple[str, ...]]:
    """First mid-point and distinct bands (ugrizy order) of the last ``n_frames`` of ``recent``."""
    window = recent[-n_frames:] if n_frames else ()
    first = window[0][0] if window else float("nan")
    return first, tuple(b for b in "ugrizy" if any(band == b for _, band in window))


def extend_recent(
    recent: Sequence[tuple[float, str]], new: Sequence[tuple[float, str]], keep: int
) -> tuple[tuple[float, str], ...]:
    """``recent`` followed by ``new``, keeping the last ``keep`` entries."""
    return tuple([*recent, *new][-keep:])
