"""Connection state of the Kafka clients: error callbacks, probes, start-up wait, delivery errors."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaError

from broker_plugin.config import KafkaSettings
from broker_plugin.exceptions import KafkaUnreachableError
from broker_plugin.kafka.connection import ConnectionMonitor
from broker_plugin.kafka.consumer import AlertConsumer
from broker_plugin.kafka.producer import DeliveryError, OutputProducer
from tests.kafka.test_clientlog import closed_port_address


def test_all_brokers_down_disconnects_and_a_connection_error_asks_for_a_probe() -> None:
    monitor = ConnectionMonitor()
    monitor.answered()
    monitor.on_error(KafkaError(KafkaError._TRANSPORT, "kafka-1:9092/1: Connection refused"))
    assert monitor.connected and monitor.suspect
    monitor.on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "3/3 brokers are down"))
    assert not monitor.connected and not monitor.suspect
    assert monitor.last_error == "_ALL_BROKERS_DOWN: 3/3 brokers are down"
    monitor.answered()
    assert monitor.connected and not monitor.suspect


@pytest.mark.integration
def test_no_broker_at_start_raises_naming_the_server_and_the_setting() -> None:
    address = closed_port_address()
    consumer = AlertConsumer(KafkaSettings(bootstrap_servers=address), "no-broker")
    start = time.monotonic()
    try:
        with pytest.raises(KafkaUnreachableError) as caught:
            consumer.wait_for_broker(2.0, lambda: False)
    finally:
        consumer.close()
    assert time.monotonic() - start < 6
    message = str(caught.value)
    assert f"no Kafka broker answered at {address} within 2 s" in message
    assert "Connection refused" in message and "BROKER_PLUGIN_KAFKA__STARTUP_TIMEOUT_S" in message
    assert "\n" not in message and not consumer.connection.connected


@pytest.mark.integration
def test_a_stop_request_ends_the_wait() -> None:
    consumer = AlertConsumer(KafkaSettings(bootstrap_servers=closed_port_address()), "no-broker")
    try:
        assert consumer.wait_for_broker(60.0, lambda: True) is False
    finally:
        consumer.close()


@pytest.mark.integration
def test_probes_of_a_live_broker(kafka_bootstrap: str) -> None:
    consumer = AlertConsumer(KafkaSettings(bootstrap_servers=kafka_bootstrap), "probe")
    try:
        assert consumer.wait_for_broker(10.0, lambda: False)
        assert consumer.check_connection(interval_s=60.0, received=False)
        assert consumer.connection.connected and not consumer.joined
    finally:
        consumer.close()


@pytest.mark.integration
def test_undelivered_messages_name_the_server_and_the_first_error() -> None:
    address = closed_port_address()
    producer = OutputProducer(KafkaSettings(bootstrap_servers=address), "no-broker")
    with pytest.raises(KafkaUnreachableError, match=f"at {address} within 1 s.*Connection refused"):
        producer.check_reachable(1.0, "the address")
    producer.produce("alerts", b"x")
    with pytest.raises(DeliveryError) as caught:
        producer.flush(timeout_s=1.5)
    message = str(caught.value)
    assert f"1 messages undelivered after 1.5 s and 0 failed, producing to {address}" in message
    assert "first error: _" in message and "none reported" not in message
