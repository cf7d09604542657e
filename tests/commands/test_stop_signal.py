"""The service's stop handler: a signal that comes before the service exists still stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from broker_plugin.commands.stop_signal import StopSignal


class _Service:
    def __init__(self) -> None:
        self.stops = 0

    def stop(self) -> None:
        self.stops += 1


@pytest.mark.usefixtures("restore_signals")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_before_the_service_exists_stops_it_once_attached(sig: signal.Signals) -> None:
    stop = StopSignal()
    os.kill(os.getpid(), sig)
    assert stop.requested.is_set()
    service = _Service()
    stop.attach(service)
    assert service.stops == 1


@pytest.mark.usefixtures("restore_signals")
def test_a_signal_after_attach_reaches_the_service() -> None:
    stop = StopSignal()
    service = _Service()
    stop.attach(service)
    assert service.stops == 0
    os.kill(os.getpid(), signal.SIGTERM)
    assert service.stops == 1


def test_the_handler_is_in_before_the_model_stack_is_imported() -> None:
    """``__main__`` imports no torch before it installs the handler of ``run``."""
    code = (
        "import sys, signal\n"
        "import broker_plugin.__main__ as m\n"
        "assert 'torch' not in sys.modules, 'torch imported before the handler'\n"
        "from broker_plugin.commands.stop_signal import StopSignal\n"
        "StopSignal()\n"
        "assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
