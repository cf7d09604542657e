"""Kafka I/O. ``confluent_kafka`` is used only inside this subpackage.

- :mod:`.config`: librdkafka configuration from :class:`~broker_plugin.config.KafkaSettings`.
- :mod:`.consumer`: the alert consumer (batches, pause/resume, commits, lag).
- :mod:`.producer`: classifications and dead letters, delivery tracked; transactions optional.
- :mod:`.embedded`: a Kafka-compatible broker (Tansu) started locally, for the demo and the tests.
- :mod:`.connection`: whether the brokers answer (error callbacks and probes).
- :mod:`.clientlog`: librdkafka's log lines and errors, repeats rate-limited.
"""
