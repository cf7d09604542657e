"""The model artifact: safetensors weights + JSON metadata + SHA-256 checksums, in one directory.

::

    <dir>/metadata.json        format version, net name and args, classes, bands, stamp, normalisation,
                               ensemble members (file, sha256, seed/fold, backbone), training data hash,
                               metrics
    <dir>/backbone-<g>.safetensors  the tensors members share (one stage-1 backbone), stored once
    <dir>/member-<k>.safetensors   one per ensemble member: its own tensors (all of them when it shares
                               no backbone); tensors only, loading runs no code
    <dir>/trees.safetensors    optional (format 3): the history trees' node arrays
                               (:class:`~broker_plugin.inference.trees.BoostedTrees`), blended with
                               the members with ``metadata["trees"]["net_weight"]``
    <dir>/SHA256SUMS           ``sha256sum -c`` compatible list of every file above

Members fine-tuned from one frozen backbone (:func:`~broker_plugin.inference.ensemble.backbone_groups`)
differ only in their heads and history layers, so format 2 stores the backbone once: the shipped five
members take a fifth of the space. Format 3 adds the optional history trees. Formats 1 (a whole net per
member file) and 2 are still read.

Loading verifies every checksum, rebuilds each member through ``create_net`` with exactly the stored
keys and shapes, and refuses an artifact that does not fit the caller (for instance a stamp pixel
scale other than the one the stamps are resampled to) with a typed :class:`ArtifactError`. The
``model_id`` (first 16 hex digits of the SHA-256 of ``SHA256SUMS``) names the version: it keys the
incremental caches and goes into every output record.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save_file as save_arrays
from safetensors.torch import load_file, save_file
from torch import nn

import broker_plugin
from broker_plugin.inference.ensemble import MEMBER_OWN_PREFIXES, backbone_groups
from broker_plugin.inference.errors import (
    ArtifactChecksumError,
    ArtifactFormatError,
    ArtifactMismatchError,
    ArtifactMissingError,
    InferenceError,
)
from broker_plugin.inference.history_statistics import HISTORY_STATISTICS
from broker_plugin.inference.nets import create_net
from broker_plugin.inference.preprocess import FluxNormalisation
from broker_plugin.inference.trees import BoostedTrees
from broker_plugin.records import BANDS

FORMAT_VERSION = 3
#: Artifact formats :func:`load_artifact` reads (1: every member file holds its whole net; 3: trees).
READABLE_FORMATS = (1, 2, 3)
TREES_FILE = "trees.safetensors"
METADATA_FILE = "metadata.json"
CHECKSUM_FILE = "SHA256SUMS"
#: The classes of the paper (spec 2.1), in output order.
CLASS_NAMES: tuple[str, ...] = ("AGN", "SNIa", "Variable", "SNOther")


@dataclass(frozen=True)
class Artifact:
    """A loaded, verified artifact.

    Attributes
    ----------
    members
        The ensemble's nets, in eval mode.
    metadata
        The parsed ``metadata.json``.
    model_id
        Short content hash naming this version.
    normalisation
        The flux normalisation the members were trained with.
    trees
        The history trees blended with the members, or None.
    """

    members: list[nn.Module]
    metadata: dict[str, Any]
    model_id: str
    normalisation: FluxNormalisation = field(repr=False)
    trees: BoostedTrees | None = field(default=None, repr=False)

    @property
    def net_weight(self) -> float:
        """The members' exponent in the blend with the trees (1.0 without trees)."""
        return float(self.metadata["trees"]["net_weight"]) if self.trees is not None else 1.0

    @property
    def class_names(self) -> list[str]:
        """Return the output class names."""
        return list(self.metadata["class_names"])

    @property
    def pixel_scale_arcsec(self) -> float:
        """Return the angular size of one stamp pixel the model was trained on [arcsec]."""
        return float(self.metadata["stamp"]["pixel_scale_arcsec"])


def _own(key: str) -> bool:
    """Whether tensor ``key`` is a member's own (not part of a backbone members may share)."""
    return key.startswith(MEMBER_OWN_PREFIXES)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_artifact(
    directory: str | Path,
    members: Sequence[nn.Module],
    *,
    normalisation: FluxNormalisation,
    pixel_scale_arcsec: float,
    training_data_hash: str,
    class_names: Sequence[str] = CLASS_NAMES,
    metrics: dict[str, Any] | None = None,
    member_info: Sequence[dict[str, Any]] | None = None,
    created: datetime | None = None,
    trees: BoostedTrees | None = None,
    trees_info: dict[str, Any] | None = None,
) -> str:
    """Write an ensemble artifact to ``directory``; return its ``model_id``.

    Parameters
    ----------
    directory
        Created if absent; files of a previous artifact there are overwritten.
    members
        Nets of one architecture (same ``net_name`` and ``net_args``).
    normalisation
        Flux normalisation used in training.
    pixel_scale_arcsec
        Angular size of one stamp pixel [arcsec].
    training_data_hash
        Identifies the training data (e.g. SHA-256 of the shard manifest).
    class_names
        Output classes, in logit order.
    metrics
        Evaluation metrics of the ensemble (JSON-ready).
    member_info
        Per-member JSON-ready facts (seed, fold, metrics).
    created
        Creation time; now (UTC) by default.
    trees
        History trees to blend with the members (history nets only).
    trees_info
        JSON-ready facts of the trees; its ``net_weight`` (default 0.5) is the members' exponent in the
        blend.
    """
    first = members[0]
    if any((m.net_name, m.net_args) != (first.net_name, first.net_args) for m in members):
        raise InferenceError("ensemble members must share net name and arguments")
    if len(class_names) != first.num_classes:
        raise InferenceError(f"{len(class_names)} class names for a net with {first.num_classes} outputs")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    info = list(member_info) if member_info is not None else [{} for _ in members]
    backbone_of = backbone_groups(members)
    shared = {g for g in backbone_of if backbone_of.count(g) > 1}
    backbones: dict[int, dict[str, str]] = {}
    for g in sorted(shared):
        name = f"backbone-{g}.safetensors"
        state = members[backbone_of.index(g)].state_dict()
        tensors = {k: t.detach().cpu().contiguous() for k, t in state.items() if not _own(k)}
        save_file(tensors, out / name, metadata={"net": first.net_name, "backbone": str(g)})
        backbones[g] = {"backbone_file": name, "backbone_sha256": _sha256(out / name)}
    entries = []
    for k, (net, extra) in enumerate(zip(members, info, strict=True)):
        name = f"member-{k}.safetensors"
        g = backbone_of[k]
        tensors = {
            key: t.detach().cpu().contiguous()
            for key, t in net.state_dict().items()
            if g not in shared or _own(key)
        }
        save_file(tensors, out / name, metadata={"net": first.net_name, "member": str(k)})
        entries.append({"file": name, "sha256": _sha256(out / name), **backbones.get(g, {}), **extra})
    metadata = {
        "format_version": FORMAT_VERSION,
        "net": {"name": first.net_name, "args": first.net_args},
        "class_names": list(class_names),
        "bands": list(BANDS),
        "band_offset": first.band_offset,
        "stamp": {"size": first.config.stamp, "pixel_scale_arcsec": float(pixel_scale_arcsec)},
        "normalisation": normalisation.to_dict(),
        "window": {"chunk_size": first.chunk_size, "max_chunks": first.max_chunks},
        "members": entries,
        "training_data_hash": training_data_hash,
        "metrics": metrics or {},
        "created": (created or datetime.now(UTC)).isoformat(),
        "plugin_version": broker_plugin.__version__,
        "torch_version": torch.__version__,
    }
    extra_files = []
    if trees is not None:
        if not getattr(first, "uses_history", False):
            raise InferenceError("history trees need members that read the photometric history")
        if trees.n_classes != len(class_names):
            raise InferenceError(f"trees of {trees.n_classes} classes for {len(class_names)} class names")
        save_arrays(trees.arrays(), out / TREES_FILE)
        extra_files.append(TREES_FILE)
        info_ = {"net_weight": 0.5, **(trees_info or {})}
        metadata["trees"] = {
            "file": TREES_FILE, "sha256": _sha256(out / TREES_FILE), "models": trees.n_models,
            "trees": len(trees.feature), "features": "history_statistics", **info_,
        }  # fmt: skip
    else:
        (out / TREES_FILE).unlink(missing_ok=True)
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    files = [METADATA_FILE] + [b["backbone_file"] for b in backbones.values()] + [e["file"] for e in entries]
    files += extra_files
    sums = "".join(f"{_sha256(out / f)}  {f}\n" for f in files)
    (out / CHECKSUM_FILE).write_text(sums)
    return hashlib.sha256(sums.encode()).hexdigest()[:16]


def _verified_checksums(root: Path) -> dict[str, str]:
    try:
        sums_text = (root / CHECKSUM_FILE).read_text()
    except FileNotFoundError:
        raise ArtifactMissingError(f"{root / CHECKSUM_FILE} not found: not a model artifact") from None
    sums: dict[str, str] = {}
    for line in sums_text.splitlines():
        digest, _, name = line.partition("  ")
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ArtifactFormatError(f"bad line in {CHECKSUM_FILE}: {line!r}")
        sums[name] = digest
    for name, digest in sums.items():
        if not (root / name).is_file():
            raise ArtifactMissingError(f"{root / name} listed in {CHECKSUM_FILE} is missing")
        if _sha256(root / name) != digest:
            raise ArtifactChecksumError(f"{root / name} does not match its SHA-256: modified or truncated")
    return sums


def load_artifact(
    directory: str | Path,
    *,
    expected_pixel_scale_arcsec: float | None = None,
    expected_stamp_size: int | None = None,
    expected_class_names: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
) -> Artifact:
    """Load and verify the artifact in ``directory``.

    Parameters
    ----------
    directory
        Written by :func:`save_artifact`.
    expected_pixel_scale_arcsec, expected_stamp_size, expected_class_names
        What the caller's stamps and outputs are; None skips the check.
    device
        Where to put the members.

    Raises
    ------
    ArtifactMissingError, ArtifactChecksumError, ArtifactFormatError, ArtifactMismatchError
        Missing file, altered file, unreadable content, or an artifact that does not fit the caller.
    """
    root = Path(directory)
    sums = _verified_checksums(root)
    if METADATA_FILE not in sums:
        raise ArtifactFormatError(f"{CHECKSUM_FILE} does not cover {METADATA_FILE}")
    try:
        meta = json.loads((root / METADATA_FILE).read_text())
        if meta.get("format_version") not in READABLE_FORMATS:
            version = meta.get("format_version")
            raise ArtifactFormatError(f"artifact format {version}, this plugin reads {READABLE_FORMATS}")
        norm = FluxNormalisation.from_dict(meta["normalisation"])
        stamp, classes = meta["stamp"], list(meta["class_names"])
        entries = meta["members"]
    except ArtifactFormatError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactFormatError(f"unreadable {METADATA_FILE}: {exc}") from None
    if meta.get("bands") != list(BANDS):
        raise ArtifactMismatchError(f"artifact bands {meta.get('bands')} differ from the plugin's {BANDS}")
    if expected_pixel_scale_arcsec is not None and not math.isclose(
        float(stamp["pixel_scale_arcsec"]), expected_pixel_scale_arcsec, rel_tol=1e-6
    ):
        raise ArtifactMismatchError(
            f"model trained on {stamp['pixel_scale_arcsec']} arcsec/pixel stamps, "
            f"but stamps are resampled to {expected_pixel_scale_arcsec} arcsec/pixel"
        )
    if expected_stamp_size is not None and stamp["size"] != expected_stamp_size:
        raise ArtifactMismatchError(f"model takes {stamp['size']} px stamps, not {expected_stamp_size}")
    if expected_class_names is not None and classes != list(expected_class_names):
        raise ArtifactMismatchError(f"model classes {classes} differ from {list(expected_class_names)}")
    loaded: dict[str, dict[str, torch.Tensor]] = {}  # backbone files, read once for all their members
    members = [_load_member(root, meta["net"], entry, sums, device, loaded) for entry in entries]
    if not members or members[0].num_classes != len(classes):
        raise ArtifactFormatError("no member, or class names do not match the net's outputs")
    trees = _load_trees(root, meta, sums, len(classes), members[0])
    model_id = hashlib.sha256((root / CHECKSUM_FILE).read_bytes()).hexdigest()[:16]
    return Artifact(members, meta, model_id, norm, trees)


def _load_trees(
    root: Path, meta: dict[str, Any], sums: dict[str, str], n_classes: int, net: nn.Module
) -> BoostedTrees | None:
    spec = meta.get("trees")
    if spec is None:
        return None
    try:
        name, weight = spec["file"], float(spec["net_weight"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactFormatError(f"unreadable trees entry in {METADATA_FILE}: {exc}") from None
    if name not in sums or sums[name] != spec.get("sha256"):
        raise ArtifactChecksumError(f"trees {name!r} are not covered by {CHECKSUM_FILE} with their SHA-256")
    if not 0.0 <= weight <= 1.0 or not getattr(net, "uses_history", False):
        raise ArtifactFormatError("trees need a net_weight in [0, 1] and members that read the history")
    try:
        trees = BoostedTrees.from_arrays(load_arrays(root / name))
    except (ValueError, SafetensorError) as exc:
        raise ArtifactFormatError(f"cannot rebuild the trees in {name}: {exc}") from None
    if trees.n_classes != n_classes or trees.n_features > HISTORY_STATISTICS:
        raise ArtifactFormatError(f"trees in {name} do not fit {n_classes} classes and the statistics")
    return trees


def _load_member(
    root: Path,
    net_spec: dict[str, Any],
    entry: dict[str, Any],
    sums: dict[str, str],
    device: str | torch.device,
    backbones: dict[str, dict[str, torch.Tensor]],
) -> nn.Module:
    name = entry.get("file", "")
    if name not in sums or sums[name] != entry.get("sha256"):
        raise ArtifactChecksumError(f"member {name!r} is not covered by {CHECKSUM_FILE} with its SHA-256")
    base = entry.get("backbone_file")
    if base is not None and (base not in sums or sums[base] != entry.get("backbone_sha256")):
        raise ArtifactChecksumError(
            f"backbone {base!r} of member {name!r} is not covered by {CHECKSUM_FILE} with its SHA-256"
        )
    try:
        net = create_net(net_spec["name"], **net_spec["args"])
        tensors = load_file(root / name)
        if base is not None:
            if base not in backbones:
                backbones[base] = load_file(root / base)
            if any(not _own(k) for k in tensors) or any(_own(k) for k in backbones[base]):
                raise ArtifactFormatError(f"member {name} and backbone {base} overlap")
            tensors = {**backbones[base], **tensors}
    except (InferenceError, TypeError, KeyError, SafetensorError) as exc:
        raise ArtifactFormatError(f"cannot rebuild member {name}: {exc}") from None
    expected = net.state_dict()
    wrong = sorted(
        k for k in expected.keys() | tensors.keys()
        if k not in tensors or k not in expected or tensors[k].shape != expected[k].shape
        or tensors[k].dtype != expected[k].dtype
    )  # fmt: skip
    if wrong:
        raise ArtifactFormatError(f"member {name} does not fit net {net_spec['name']}: {wrong[:5]}")
    net.load_state_dict(tensors, strict=True)
    return net.to(device).eval()
