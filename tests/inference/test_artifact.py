import json
import shutil

import numpy as np
import pytest
import torch

from broker_plugin.inference.artifact import (
    CHECKSUM_FILE,
    FORMAT_VERSION,
    METADATA_FILE,
    _sha256,
    load_artifact,
    save_artifact,
)
from broker_plugin.inference.errors import (
    ArtifactChecksumError,
    ArtifactFormatError,
    ArtifactMismatchError,
    ArtifactMissingError,
)
from broker_plugin.inference.preprocess import FluxNormalisation
from tests.factories import share_backbone

from .conftest import make_members

NORM = FluxNormalisation("asinh", scale=(50.0, 60.0, 70.0, 80.0, 90.0, 100.0))


@pytest.fixture
def artifact(tmp_path):
    members = make_members("convention-small")
    model_id = save_artifact(
        tmp_path / "model",
        members,
        normalisation=NORM,
        pixel_scale_arcsec=0.2,
        training_data_hash="sha256:abc",
        metrics={"macro_f1": 0.71},
        member_info=[{"seed": 0}, {"seed": 1}],
    )
    return tmp_path / "model", members, model_id


def resign(root):
    """Recompute SHA256SUMS, as someone editing the artifact on purpose would."""
    names = [line.split("  ")[1] for line in (root / CHECKSUM_FILE).read_text().splitlines()]
    (root / CHECKSUM_FILE).write_text("".join(f"{_sha256(root / n)}  {n}\n" for n in names))


def edit_metadata(root, change):
    meta = json.loads((root / METADATA_FILE).read_text())
    change(meta)
    (root / METADATA_FILE).write_text(json.dumps(meta))
    resign(root)


def test_round_trip_is_bit_exact(artifact):
    root, members, model_id = artifact
    loaded = load_artifact(root, expected_pixel_scale_arcsec=0.2, expected_stamp_size=32)
    assert loaded.model_id == model_id and len(loaded.members) == 2
    for original, back in zip(members, loaded.members, strict=True):
        ref, got = original.state_dict(), back.state_dict()
        assert ref.keys() == got.keys()
        assert all(torch.equal(ref[k], got[k]) and ref[k].dtype == got[k].dtype for k in ref)
        assert not back.training
    assert loaded.normalisation == NORM
    meta = loaded.metadata
    assert meta["net"]["name"] == "convention-small"
    assert meta["class_names"] == ["AGN", "SNIa", "Variable", "SNOther"]
    assert meta["members"][1]["seed"] == 1 and meta["training_data_hash"] == "sha256:abc"
    assert {"created", "plugin_version", "metrics", "bands", "stamp", "format_version"} <= meta.keys()


def test_weights_are_safetensors_not_pickle(artifact):
    raw = (artifact[0] / "member-0.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8 : 8 + header_len])["__metadata__"]["net"] == "convention-small"
    assert not raw.startswith(b"\x80") and b"PK" not in raw[:4]  # neither pickle nor torch.save zip


def test_tampered_weights_are_refused(artifact):
    root = artifact[0]
    raw = bytearray((root / "member-1.safetensors").read_bytes())
    raw[-3] ^= 0x01
    (root / "member-1.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ArtifactChecksumError, match="member-1"):
        load_artifact(root)


def test_tampered_metadata_is_refused(artifact):
    root = artifact[0]
    text = (root / METADATA_FILE).read_text().replace('"SNIa"', '"SNII"')
    (root / METADATA_FILE).write_text(text)
    with pytest.raises(ArtifactChecksumError, match=METADATA_FILE):
        load_artifact(root)


def test_swapped_member_file_is_refused_even_when_resigned(artifact, tmp_path):
    root = artifact[0]
    other = tmp_path / "other"
    # Seed 1's weights: certainly not member 0's (make_members seeds member k with k).
    save_artifact(
        other,
        make_members("convention-small", count=2)[1:],
        normalisation=NORM,
        pixel_scale_arcsec=0.2,
        training_data_hash="x",
    )
    shutil.copy(other / "member-0.safetensors", root / "member-0.safetensors")
    resign(root)  # SHA256SUMS now agrees, but the metadata's member hash does not
    with pytest.raises(ArtifactChecksumError, match="member-0"):
        load_artifact(root)


def test_mismatched_expectations_are_refused(artifact):
    root = artifact[0]
    with pytest.raises(ArtifactMismatchError, match="arcsec"):
        load_artifact(root, expected_pixel_scale_arcsec=1.01)
    with pytest.raises(ArtifactMismatchError, match="px"):
        load_artifact(root, expected_stamp_size=63)
    with pytest.raises(ArtifactMismatchError, match="classes"):
        load_artifact(root, expected_class_names=["SN", "AGN"])


def test_inconsistent_metadata_is_refused(artifact):
    root = artifact[0]
    edit_metadata(root, lambda m: m["net"]["args"].update(channels=[8, 16, 16, 16]))
    with pytest.raises(ArtifactFormatError, match="does not fit"):
        load_artifact(root)
    edit_metadata(root, lambda m: m.update(format_version=99))
    with pytest.raises(ArtifactFormatError, match="format"):
        load_artifact(root)


def test_missing_files_are_refused(artifact, tmp_path):
    root = artifact[0]
    with pytest.raises(ArtifactMissingError):
        load_artifact(tmp_path)
    (root / "member-0.safetensors").unlink()
    with pytest.raises(ArtifactMissingError, match="member-0"):
        load_artifact(root)


@pytest.fixture
def shared_artifact(tmp_path):
    """Three members on one backbone (the default recipe's folds) and one on its own."""
    members = share_backbone(make_members("convention-alert-small", count=4), [0, 0, 1, 0])
    model_id = save_artifact(
        tmp_path / "shared", members, normalisation=NORM, pixel_scale_arcsec=0.2, training_data_hash="x"
    )
    return tmp_path / "shared", members, model_id


def test_a_shared_backbone_is_stored_once_and_loads_bit_exact(shared_artifact):
    root, members, model_id = shared_artifact
    loaded = load_artifact(root)
    assert loaded.model_id == model_id and loaded.metadata["format_version"] == FORMAT_VERSION == 3
    for original, back in zip(members, loaded.members, strict=True):
        ref, got = original.state_dict(), back.state_dict()
        assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    entries = loaded.metadata["members"]
    assert [e.get("backbone_file") for e in entries] == [
        "backbone-0.safetensors", "backbone-0.safetensors", None, "backbone-0.safetensors",
    ]  # fmt: skip
    listed = [line.split("  ")[1] for line in (root / CHECKSUM_FILE).read_text().splitlines()]
    assert "backbone-0.safetensors" in listed and "backbone-1.safetensors" not in listed
    size = {p.name: p.stat().st_size for p in root.glob("*.safetensors")}
    # A sharing member's file holds its head and history layers only; the lone member its whole net.
    assert size["member-0.safetensors"] * 3 < size["backbone-0.safetensors"] < size["member-2.safetensors"]


def test_a_tampered_or_swapped_backbone_is_refused(shared_artifact, tmp_path):
    root = shared_artifact[0]
    original = (root / "backbone-0.safetensors").read_bytes()
    raw = bytearray(original)
    raw[-3] ^= 0x01
    (root / "backbone-0.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ArtifactChecksumError, match="backbone-0"):
        load_artifact(root)
    resign(root)  # SHA256SUMS agrees now, the members' recorded backbone hash does not
    with pytest.raises(ArtifactChecksumError, match="backbone-0"):
        load_artifact(root)


def test_format_1_artifacts_with_whole_member_files_still_load(artifact):
    root, members, _ = artifact
    edit_metadata(root, lambda m: m.update(format_version=1))
    loaded = load_artifact(root)
    for original, back in zip(members, loaded.members, strict=True):
        assert all(torch.equal(v, back.state_dict()[k]) for k, v in original.state_dict().items())


def test_history_trees_are_stored_checksummed_and_load_equal(tmp_path):
    from broker_plugin.inference.errors import InferenceError

    from ..factories import make_artifact, make_trees

    directory = make_artifact(tmp_path / "a", "convention-alert-small", 2, shared_backbone=True, trees=True)
    art = load_artifact(directory)
    expected, _ = make_trees()
    assert art.trees is not None and art.net_weight == 0.5
    for name, array in expected.arrays().items():
        np.testing.assert_array_equal(getattr(art.trees, name), array)
    meta = json.loads((directory / "metadata.json").read_text())
    assert meta["format_version"] == 3 and meta["trees"]["models"] == 2
    assert "trees.safetensors" in (directory / "SHA256SUMS").read_text()
    # The trees are part of the model: altering them is refused like altering a member.
    data = bytearray((directory / "trees.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (directory / "trees.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactChecksumError):
        load_artifact(directory)
    # Without trees, an artifact of the same members has no trees file and the members alone answer.
    plain = make_artifact(tmp_path / "b", "convention-alert-small", 2, shared_backbone=True)
    assert load_artifact(plain).trees is None and load_artifact(plain).net_weight == 1.0
    assert not (plain / "trees.safetensors").exists()
    with pytest.raises(InferenceError, match="history"):
        make_artifact(tmp_path / "c", "convention-small", 1, trees=True)
