"""Bytes <-> records. ``fastavro`` is used only inside this subpackage.

- :mod:`.schemas`: Rubin writer schemas by id (bundled 3.0 .. latest, optional schema registry).
- :mod:`.rubin`, :mod:`.ztf`: one Avro record -> :class:`~broker_plugin.records.Alert`.
- :mod:`.alerts`: a Kafka message or container file -> alerts, with typed errors only.
- :mod:`.files`: alert files, folders and tar archives.
- :mod:`.classifications`: our output record.
"""
