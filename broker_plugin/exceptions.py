"""Typed errors of the plugin.

Every failure a message can cause is one of these, so the service can route it to the dead-letter topic
with ``reason`` as a header and keep going. ``reason`` is a short, stable, machine-readable code (it is
also a Prometheus label value); the message says what exactly went wrong.
"""


class BrokerPluginError(Exception):
    """Base class of every error the plugin raises on purpose."""

    reason = "error"


class MessageTooLargeError(BrokerPluginError):
    """A message larger than the configured limit (no alert is that large)."""

    reason = "message_too_large"


class AlertDecodeError(BrokerPluginError):
    """The message bytes are not an alert we can read."""

    reason = "decode_error"


class WrongMagicByteError(AlertDecodeError):
    """The Confluent wire-format prefix does not start with byte 0x00."""

    reason = "wrong_magic_byte"


class UnknownSchemaError(AlertDecodeError):
    """The schema id names no schema we ship and the registry (if any) does not know it."""

    reason = "unknown_schema"


class SchemaRegistryError(AlertDecodeError):
    """The schema registry could not be reached or answered nonsense."""

    reason = "schema_registry_unavailable"


class TruncatedMessageError(AlertDecodeError):
    """The message ends before the record it announces."""

    reason = "truncated"


class MalformedAvroError(AlertDecodeError):
    """The body is not valid Avro for its writer schema (or not Avro at all)."""

    reason = "malformed_avro"


class UnsupportedAlertError(AlertDecodeError):
    """Valid Avro, but not a Rubin or ZTF alert record we know how to map."""

    reason = "unsupported_alert"


class MissingFieldError(AlertDecodeError):
    """A field the pipeline needs (id, time, band) is null or absent."""

    reason = "missing_field"


class StampError(BrokerPluginError):
    """A cutout cannot be turned into a normalised frame."""

    reason = "stamp_error"


class MissingCutoutError(StampError):
    """The alert carries no ``cutoutDifference``."""

    reason = "missing_cutout"


class CorruptCutoutError(StampError):
    """The cutout bytes are not a readable FITS image (or not gzip, for ZTF)."""

    reason = "corrupt_cutout"


class CutoutWcsError(StampError):
    """The cutout header has no usable coordinate transform."""

    reason = "bad_cutout_wcs"


class CutoutShapeError(StampError):
    """The cutout image has an unusable shape (not 2-D, or too small)."""

    reason = "bad_cutout_shape"


class EmptyCutoutError(StampError):
    """Too few finite pixels fall inside the normalised frame (NaN-only or off-frame cutout)."""

    reason = "empty_cutout"
