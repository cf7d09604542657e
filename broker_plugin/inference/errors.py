"""Typed errors of the inference layer.

Each carries a stable ``reason`` code (a Prometheus label value and a dead-letter header), as every
:class:`~broker_plugin.exceptions.BrokerPluginError` does.
"""

from broker_plugin.exceptions import BrokerPluginError


class InferenceError(BrokerPluginError):
    """Base class of the errors raised by :mod:`broker_plugin.inference`."""

    reason = "inference_error"


class UnknownNetError(InferenceError):
    """``create_net`` was asked for a name that is not registered."""

    reason = "unknown_net"


class InferenceInputError(InferenceError):
    """Frames or arrays that cannot become model input (unknown band, wrong shape, empty sequence)."""

    reason = "bad_inference_input"


class CacheError(InferenceError):
    """Incremental-cache bytes that are corrupt or belong to another model version."""

    reason = "bad_inference_cache"


class ArtifactError(InferenceError):
    """A model artifact cannot be written or loaded."""

    reason = "artifact_error"


class ArtifactMissingError(ArtifactError):
    """A file of the artifact (metadata, checksum list or weights) is absent."""

    reason = "artifact_missing"


class ArtifactFormatError(ArtifactError):
    """Metadata or weights are not in the format this plugin writes (bad JSON, unknown version, keys)."""

    reason = "artifact_format"


class ArtifactChecksumError(ArtifactError):
    """A file's SHA-256 differs from the one recorded: the artifact was modified or truncated."""

    reason = "artifact_checksum_mismatch"


class ArtifactMismatchError(ArtifactError):
    """The artifact is intact but does not fit what the caller expects (stamp scale, bands, classes)."""

    reason = "artifact_mismatch"
