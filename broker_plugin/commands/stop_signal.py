"""SIGTERM/SIGINT for the long-lived service, installed before anything slow is imported.

Importing the model stack (torch) and loading an artifact take seconds; a signal that arrived then would
kill the process with the default action instead of a clean stop. This module imports nothing heavy, so
``__main__`` installs the handler right after parsing the command line.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Protocol

log = logging.getLogger(__name__)


class Stoppable(Protocol):
    """What a stop request reaches once the service exists."""

    def stop(self) -> None:
        """Finish the current batches, then return from ``run``."""


class StopSignal:
    """Records SIGTERM/SIGINT and forwards it to the service once one is attached."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._service: Stoppable | None = None
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._handle)

    def attach(self, service: Stoppable) -> None:
        """Forward later signals to ``service``, and stop it now if one already came."""
        self._service = service
        if self.requested.is_set():
            service.stop()

    def _handle(self, signum: int, frame: object) -> None:
        del frame
        log.info("signal %d: finishing the current batches, then stopping", signum)
        self.requested.set()
        if self._service is not None:
            self._service.stop()
