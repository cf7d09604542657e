"""librdkafka's log lines and errors, with repeats rate-limited.

A broker that is down makes librdkafka log every reconnection attempt (several lines a second, for hours).
:class:`RateLimitedLog` is handed to the clients as their ``logger``: the first line of a kind goes
through, similar ones (the same text up to numbers and a trailing parenthesis) are counted for
``window_s`` and the next one let through says how many were suppressed.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

#: Logger of every librdkafka line and client error.
CLIENT_LOGGER = "broker_plugin.kafka.librdkafka"
#: How long similar lines are held back after one went through [s].
DEFAULT_WINDOW_S = 60.0
#: Kinds of line remembered before the ones quiet for a whole window are forgotten.
_MAX_KINDS = 1024
_NUMBERS = re.compile(r"\d+")
# librdkafka ends repeated connection errors with "(after 0ms in state CONNECT, 4 identical error(s)
# suppressed)" or "(after 3ms in state UP)": the same failure, whatever the parenthesis says.
_TRAILER = re.compile(r"\s*\((?:[^()]|\([^()]*\))*\)\s*$")


def similarity_key(text: str) -> str:
    """What similar lines share: ``text`` without its trailing parenthesis, numbers blanked."""
    return _NUMBERS.sub("#", _TRAILER.sub("", text))


@dataclass
class _Kind:
    last_s: float
    suppressed: int = 0


class RateLimitedLog(logging.LoggerAdapter):
    """A logger that lets one line of each kind through per ``window_s`` (thread-safe).

    librdkafka calls ``log(level, "%s [%s] %s", facility, client, text)`` with Python levels; numbers
    (client ids, ports, counts, milliseconds) are blanked in the key, so repeated failures fold together.

    Parameters
    ----------
    logger
        Where the lines that pass go.
    window_s
        Similar lines after one that passed are suppressed for this long [s].
    clock
        Monotonic time [s] (tests pass their own).
    """

    def __init__(
        self,
        logger: logging.Logger | None = None,
        window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(logger or logging.getLogger(CLIENT_LOGGER), {})
        self._window_s, self._clock = window_s, clock
        self._kinds: dict[tuple[int, str], _Kind] = {}
        self._lock = threading.Lock()
        self._suppressed_total = 0

    @property
    def suppressed_total(self) -> int:
        """Lines held back since this logger was made."""
        with self._lock:
            return self._suppressed_total

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        """Log ``msg % args`` unless a similar line passed less than ``window_s`` ago."""
        if not self.logger.isEnabledFor(level):
            return
        text = str(msg) % args if args else str(msg)
        suppressed = self._admit(level, similarity_key(text))
        if suppressed is None:
            return
        if suppressed:
            text = f"{text} (suppressed {suppressed} similar)"
        self.logger.log(level, "%s", text, **kwargs)

    def _admit(self, level: int, key: str) -> int | None:
        """How many similar lines were suppressed before this one, or ``None`` to suppress it too."""
        now = self._clock()
        with self._lock:
            kind = self._kinds.get((level, key))
            if kind is not None and now - kind.last_s < self._window_s:
                kind.suppressed += 1
                self._suppressed_total += 1
                return None
            if kind is None and len(self._kinds) >= _MAX_KINDS:
                self._forget(now)
            self._kinds[(level, key)] = _Kind(now)
            return kind.suppressed if kind is not None else 0

    def _forget(self, now: float) -> None:
        """Drop the kinds quiet for a window, or else the oldest one (memory stays bounded)."""
        quiet = [k for k, kind in self._kinds.items() if now - kind.last_s >= self._window_s]
        if not quiet:
            quiet = [min(self._kinds, key=lambda k: self._kinds[k].last_s)]
        for key in quiet:
            del self._kinds[key]

    def process(
        self, msg: object, kwargs: MutableMapping[str, Any]
    ) -> tuple[object, MutableMapping[str, Any]]:
        """Messages go through unchanged (the adapter adds no context)."""
        return msg, kwargs
