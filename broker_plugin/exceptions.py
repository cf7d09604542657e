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


class InvalidFieldError(AlertDecodeError):
    """A field the pipeline uses has the wrong type, is not finite or is outside its physical range."""

    reason = "invalid_field"


class InvalidTimeError(InvalidFieldError):
    """The observation time (``midpointMjdTai``, ZTF ``jd``) is not finite or outside the survey era."""

    reason = "invalid_time"


class InvalidBandError(InvalidFieldError):
    """The band (Rubin ``band``, ZTF ``fid``) is empty, blank or not a known filter."""

    reason = "invalid_band"


class InvalidPositionError(InvalidFieldError):
    """Sky or detector position (ra, dec, ``xpos``/``ypos``) not finite or out of range."""

    reason = "invalid_position"


class InvalidPhotometryError(InvalidFieldError):
    """Flux, magnitude, their errors or the zero point are not finite or physically impossible."""

    reason = "invalid_photometry"


class InvalidIdentifierError(InvalidFieldError):
    """An id (``diaObjectId``, ``diaSourceId``, ZTF ``objectId``/``candid``) of the wrong type or size."""

    reason = "invalid_identifier"


class ResourceLimitError(AlertDecodeError):
    """The message declares or inflates to more than a configured resource limit (record count, bytes)."""

    reason = "resource_limit"


class CutoutTooLargeError(StampError):
    """The cutout decompresses to, or declares, more bytes or pixels than the configured limit."""

    reason = "cutout_too_large"


class CutoutHeaderError(StampError):
    """The cutout's FITS header is malformed (NAXIS, BITPIX, a non-numeric or absurd WCS keyword)."""

    reason = "bad_cutout_header"


class CutoutValueError(StampError):
    """Cutout pixels outside any physical flux range (e.g. 1e38 nJy): the frame would overflow the model."""

    reason = "bad_cutout_values"


class InvalidFrameError(StampError):
    """A normalised frame that breaks the frame invariants (shape, dtype, finite and bounded values)."""

    reason = "invalid_frame"


class StateUrlError(BrokerPluginError):
    """The state-store URL names an unknown scheme or a file that is not a state database."""

    reason = "bad_state_url"


class KafkaUnreachableError(BrokerPluginError):
    """No Kafka broker answered at the configured bootstrap servers (address, network or security)."""

    reason = "kafka_unreachable"
