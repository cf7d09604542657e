from broker_plugin.config import KafkaSettings
from broker_plugin.kafka.config import consumer_config, producer_config


def test_rubin_style_sasl_ssl() -> None:
    settings = KafkaSettings(
        bootstrap_servers="usdf-alert-stream.example:9094", security_protocol="SASL_SSL",
        sasl_username="broker", sasl_password="s3cret", ssl_ca_location="/etc/ssl/ca.pem",
    )  # fmt: skip
    config = consumer_config(settings, "c1")
    assert config["security.protocol"] == "sasl_ssl"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (config["sasl.username"], config["sasl.password"]) == ("broker", "s3cret")
    assert config["ssl.ca.location"] == "/etc/ssl/ca.pem"
    assert config["partition.assignment.strategy"] == "cooperative-sticky"
    assert config["enable.auto.commit"] is False and config["enable.auto.offset.store"] is False


def test_plaintext_has_no_credentials_and_transactions_are_opt_in() -> None:
    settings = KafkaSettings()
    assert "sasl.username" not in consumer_config(settings, "c")
    assert "transactional.id" not in producer_config(settings, "p")
    tx = producer_config(KafkaSettings(transactional_id="plugin-0"), "p")
    assert tx["transactional.id"] == "plugin-0" and tx["enable.idempotence"] is True and tx["acks"] == "all"
