"""``python -m broker_plugin replay PATH --topic T``: archived alerts into a topic, as surveys send them.

Rubin alerts (records of Avro container files, or already-framed messages) are sent one per message
with Confluent framing (0x00 + schema id of their writer version), no key, and a ``producer_timestamp``
header [ms], like Rubin's own producer; ZTF alerts go one container file per message, like ZTF's. The
alerts are sent in time order (``midpointMjdTai``, across all files), at ``--rate`` alerts/s or as fast as
possible (optionally keyed by object, see :func:`replay`). The whole archive is held in memory to sort
it: split very large archives. Before anything is read, the brokers must answer within a few seconds, or
:class:`~broker_plugin.exceptions.KafkaUnreachableError` names the servers (exit status 1). On a terminal,
progress bars on stderr count the alerts read, then the alerts produced (rate and ETA).
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from confluent_kafka import KafkaError, KafkaException

from broker_plugin.config import KafkaSettings
from broker_plugin.exceptions import AlertDecodeError, BrokerPluginError
from broker_plugin.kafka.producer import OutputProducer
from broker_plugin.progress import progress
from broker_plugin.serde.alerts import CONTAINER_MAGIC, AlertDecoder, iter_container, record_to_alert
from broker_plugin.serde.files import iter_alert_payloads
from broker_plugin.serde.rubin import encode_rubin_message
from broker_plugin.serde.schemas import RubinSchemaStore, bundled_rubin_versions

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReplayMessage:
    """One message to send, with the time it is sorted by."""

    midpointMjdTai: float
    value: bytes
    diaObjectId: int | str = 0


def collect_messages(
    path: Path, decoder: AlertDecoder, show_progress: bool | None = None, err: TextIO | None = None
) -> tuple[list[ReplayMessage], int]:
    """Every alert under ``path`` as a message value, in time order, and the count of unreadable files.

    ``show_progress`` (None: when ``err``, default stderr, is a terminal) counts the files read on ``err``.
    """
    rubin_versions = set(bundled_rubin_versions())
    messages: list[ReplayMessage] = []
    unreadable = 0
    files = progress(
        iter_alert_payloads(path), desc="reading the archive", unit=" files", enabled=show_progress, file=err
    )
    for name, raw in files:
        if not isinstance(raw, bytes):
            unreadable += 1
            log.warning("skipping %s: %s", name, raw)
            continue
        try:
            if not raw.startswith(CONTAINER_MAGIC):
                (alert,) = decoder.decode_message(raw)  # already a framed Rubin message: send as is
                messages.append(ReplayMessage(alert.midpointMjdTai, raw, alert.diaObjectId))
                continue
            records = list(iter_container(io.BytesIO(raw), full=True))
            if records and "candidate" in records[0][0]:  # ZTF: the whole file is the message
                alert = record_to_alert(records[0][0])
                messages.append(ReplayMessage(alert.midpointMjdTai, raw, alert.diaObjectId))
                continue
            for record, version in records:
                if version not in rubin_versions:
                    raise AlertDecodeError(
                        f"container schema {version or 'unknown'} is not a bundled Rubin version"
                    )
                alert = record_to_alert(record, version)
                value = encode_rubin_message(record, version)
                messages.append(ReplayMessage(alert.midpointMjdTai, value, alert.diaObjectId))
        except BrokerPluginError as exc:
            unreadable += 1
            log.warning("skipping %s: %s", name, exc)
        except Exception:  # a bug met by one file: skip it, keep the archive
            unreadable += 1
            log.exception("skipping %s: unexpected error", name)
        files.set_postfix_str(f"{len(messages)} alerts", refresh=False)
    files.close()
    messages.sort(key=lambda m: m.midpointMjdTai)
    return messages, unreadable


def replay(
    path: Path,
    topic: str,
    settings: KafkaSettings,
    rate: float = 0.0,
    key_by_object: bool = False,
    connect_timeout_s: float = 5.0,
    show_progress: bool | None = None,
    err: TextIO | None = None,
) -> int:
    """Send the alerts under ``path`` to ``topic``; return how many were sent.

    Like the surveys, messages carry no key and spread over the partitions, so a fast replay can
    deliver one object's alerts out of order (live, visits are at least ~30 s apart). ``key_by_object``
    keys them by ``diaObjectId``: one partition per object, in order. ``show_progress`` forces the
    progress bars on ``err`` (default stderr) on or off; None shows them when it is a terminal.

    Raises
    ------
    KafkaUnreachableError
        No broker answered within ``connect_timeout_s`` [s] (checked before the archive is read).
    DeliveryError
        Messages stayed undelivered; the message names the servers and the first error.
    """
    producer = OutputProducer(settings, client_id="broker-plugin-replay")
    producer.check_reachable(
        connect_timeout_s,
        "--bootstrap-servers (or BROKER_PLUGIN_KAFKA__BOOTSTRAP_SERVERS), the network and the security"
        " settings",
    )
    messages, unreadable = collect_messages(path, AlertDecoder(RubinSchemaStore()), show_progress, err)
    start = time.monotonic()
    too_large = 0
    producing = progress(
        messages, desc=f"producing to {topic}", unit=" alerts", enabled=show_progress, file=err
    )
    for i, message in enumerate(producing):
        if rate > 0:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        stamp = str(time.time() * 1000).encode()
        key = str(message.diaObjectId).encode() if key_by_object else None
        try:
            producer.produce(topic, message.value, key=key, headers=[("producer_timestamp", stamp)])
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE:
                raise
            too_large += 1
            log.warning("skipping an alert of %d bytes: larger than max_produce_bytes", len(message.value))
    producing.close()
    producer.flush()
    sent = len(messages) - too_large
    log.info("replayed %d alerts into %s (%d unreadable files skipped)", sent, topic, unreadable)
    return sent
