"""librdkafka's log lines are rate-limited: a broker that is down must not flood the log."""

from __future__ import annotations

import logging
import socket
import time

import pytest
from confluent_kafka import Consumer

from broker_plugin.config import KafkaSettings
from broker_plugin.kafka.clientlog import CLIENT_LOGGER, RateLimitedLog, similarity_key
from broker_plugin.kafka.config import admin_config, consumer_config, producer_config


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def closed_port_address() -> str:
    """An address where nothing listens (a port just released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


REFUSED = "[thrd:127.0.0.1:{p}/bootstrap]: 127.0.0.1:{p}/bootstrap: Connect to ipv4#127.0.0.1:{p} failed: "


def test_similar_lines_pass_once_per_window_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = RateLimitedLog(logging.getLogger("test.ratelimit"), window_s=10.0, clock=clock)
    caplog.set_level(logging.DEBUG, "test.ratelimit")
    for i in range(100):
        clock.now = i * 0.05
        suffix = (
            "(after 0ms in state CONNECT)"
            if i % 2
            else f"(after {i}ms in state CONNECT, 3 identical error(s) suppressed)"
        )
        log.log(
            logging.ERROR,
            "%s [%s] %s",
            "FAIL",
            f"rdkafka#consumer-{i}",
            REFUSED.format(p=9092) + "Connection refused " + suffix,
        )
    log.log(logging.WARNING, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "another kind of line")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "Connection refused" in messages[0], messages
    assert messages[1].endswith("another kind of line")
    clock.now = 11.0
    log.log(
        logging.ERROR,
        "%s [%s] %s",
        "FAIL",
        "rdkafka#consumer-7",
        REFUSED.format(p=9092) + "Connection refused",
    )
    assert len(caplog.records) == 3
    assert caplog.records[-1].getMessage().endswith("Connection refused (suppressed 99 similar)")
    assert caplog.records[-1].levelno == logging.ERROR
    assert log.suppressed_total == 99


def test_the_key_ignores_numbers_and_the_trailing_parenthesis_only() -> None:
    a = similarity_key(REFUSED.format(p=1) + "Connection refused (after 0ms in state CONNECT)")
    b = similarity_key(
        REFUSED.format(p=2) + "Connection refused (after 3ms in state UP, 2 identical error(s))"
    )
    assert a == b
    assert a != similarity_key(REFUSED.format(p=1) + "Name or service not known")


def test_kinds_are_bounded() -> None:
    clock = Clock()
    log = RateLimitedLog(logging.getLogger("test.ratelimit.bound"), window_s=1e9, clock=clock)
    for i in range(5000):
        clock.now = float(i)
        log.log(logging.INFO, "distinct line %s", chr(0x4E00 + i))  # numbers would fold together
    assert len(log._kinds) <= 1024


def test_every_client_gets_the_rate_limited_logger_and_an_error_callback() -> None:
    settings = KafkaSettings()
    for config in (consumer_config(settings, "c"), producer_config(settings, "p"), admin_config("h:1")):
        assert isinstance(config["logger"], RateLimitedLog) and callable(config["error_cb"])
    on_error = print
    assert consumer_config(settings, "c", on_error)["error_cb"] is on_error


@pytest.mark.integration
def test_a_wrong_bootstrap_server_logs_a_handful_of_lines(caplog: pytest.LogCaptureFixture) -> None:
    """A consumer polling a closed port for 4 s: librdkafka retries dozens of times, a few lines show."""
    caplog.set_level(logging.DEBUG, "broker_plugin")
    settings = KafkaSettings(bootstrap_servers=closed_port_address())
    config = consumer_config(settings, "wrong-server") | {
        "group.id": "g", "reconnect.backoff.ms": 10, "reconnect.backoff.max.ms": 50,
    }  # fmt: skip
    consumer = Consumer(config)
    consumer.subscribe(["alerts"])
    end = time.monotonic() + 4.0
    try:
        while time.monotonic() < end:
            consumer.consume(10, 0.1)
    finally:
        consumer.close()
    lines = [r.getMessage() for r in caplog.records if r.name == CLIENT_LOGGER]
    refused = [line for line in lines if "Connection refused" in line]
    assert config["logger"].suppressed_total >= 20, "librdkafka did not retry as expected"
    assert 1 <= len(refused) <= 4, lines
    assert len(lines) <= 8, lines
    assert any("_ALL_BROKERS_DOWN" in line for line in lines), lines
