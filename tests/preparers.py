"""Preparers for tests, built inside preparation processes (module level: they are pickled by reference)."""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence

from broker_plugin.prepare import PrepareConfig, Prepared, Preparer
from broker_plugin.records import Alert

#: A message whose value starts with this kills the preparation process that reads it (SIGSEGV), as a C
#: library crashing on a hostile message would.
SEGFAULT = b"\x00SEGFAULT"
#: The decoder meets a bug on a (valid) alert with this ``diaSourceId``.
DECODER_BUG_SOURCE = 99_900


class _Crashing(Preparer):
    def prepare(self, values: Sequence[bytes]) -> Prepared:
        if any(value.startswith(SEGFAULT) for value in values):
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().prepare(values)


def crashing(config: PrepareConfig) -> Preparer:
    """A preparer whose process dies on a message starting with :data:`SEGFAULT`."""
    return _Crashing(config)


def buggy_decoder(config: PrepareConfig) -> Preparer:
    """A preparer whose decoder raises ``RuntimeError("decoder bug")`` on :data:`DECODER_BUG_SOURCE`."""
    preparer = Preparer(config)
    decode = preparer._decoder.decode_message

    def decoding(value: bytes) -> list[Alert]:
        alerts = decode(value)
        if any(alert.diaSourceId == DECODER_BUG_SOURCE for alert in alerts):
            raise RuntimeError("decoder bug")
        return alerts

    preparer._decoder.decode_message = decoding  # type: ignore[method-assign]
    return preparer


def refusing(config: PrepareConfig) -> Preparer:
    """No preparer: as a process whose settings cannot build one."""
    raise ValueError(f"cannot build a preparer for {config.bands}")
