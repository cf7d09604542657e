"""Real labelled data: the shared ZTF alerts and labels file, through serving's decoder and normaliser."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from broker_plugin.config import Settings
from broker_plugin.factory import build_decoder
from broker_plugin.inference import create_net
from broker_plugin.inference.preprocess import FluxNormalisation
from broker_plugin.serde.alerts import iter_payload
from broker_plugin.serde.files import iter_alert_payloads
from broker_plugin.stamps import StampNormaliser
from broker_plugin_train.config import CLASSES
from broker_plugin_train.objects import fit_normalisation
from broker_plugin_train.prefix import head_probs, prefix_features
from broker_plugin_train.realdata import build_source, read_labels
from tests.factories import ZTF_GOLDEN, shared_ztf_dir

SHARED = shared_ztf_dir()
needs_shared = pytest.mark.skipif(
    SHARED is None or not (SHARED / "labels.csv").exists(),
    reason="shared ZTF sample with labels.csv not found",
)


def test_read_labels_maps_catalogue_types_and_drops_conflicts(tmp_path: Path):
    path = tmp_path / "labels.csv"
    path.write_text("objectId,cdsxmatch\nA,BLLac\nA,BLLac\nB,RRLyr\nC,\nD,Unknown\nE,QSO\nE,RRLyr\nF,SNIa\n")
    assert read_labels(path) == {"A": "AGN", "B": "Variable", "F": "SNIa"}
    own = tmp_path / "own.csv"
    own.write_text("diaObjectId,label\n17,SNOther\n18,Variable\n")
    assert read_labels(own, mapping=None) == {"17": "SNOther", "18": "Variable"}


@needs_shared
def test_training_set_from_real_ztf_alerts_and_labels():
    assert SHARED is not None
    source, report = build_source(SHARED, SHARED / "labels.csv")
    labels = read_labels(SHARED / "labels.csv")
    assert report.alerts == len(list(SHARED.glob("*.avro")))
    assert report.objects == len(source) > 0
    assert set(source.ids) <= set(labels)
    assert [CLASSES[c] for c in source.labels] == [labels[i] for i in source.ids]
    assert report.frames == sum(len(source.raw(i).bands) for i in range(len(source)))
    # Frames are exactly what the service's normaliser gives for the same alerts.
    settings = Settings()
    decoder, normaliser = build_decoder(settings), StampNormaliser(settings.stamps)
    with (SHARED / "labels.csv").open() as handle:
        candid_of = {r["objectId"]: int(r["candid"]) for r in csv.DictReader(handle)}
    k, found = 0, 0
    obj = source.ids[k]
    for _, raw in iter_alert_payloads(SHARED):
        for alert in iter_payload(raw, decoder):
            if str(alert.diaObjectId) == obj and alert.diaSourceId == candid_of[obj]:
                frame = normaliser.normalise(alert)
                got = source.raw(k)
                assert any(np.array_equal(frame.data, f) for f in got.flux)
                found += 1
    assert found == 1
    # The training machinery runs on it: normalisation, model input, frozen features, a head.
    norm = fit_normalisation(source, np.arange(len(source)), 10, "asinh", 0)
    assert isinstance(norm, FluxNormalisation)
    torch.manual_seed(0)
    net = create_net("convention-small", channels=(4, 8, 8, 8), head_hidden=8, depth=1)
    inputs = [source.model_input(i, norm, net.band_offset) for i in range(len(source))]
    probs = head_probs(net.head, prefix_features(net, inputs, (3,)))
    assert probs.shape == (len(source), 2, len(CLASSES))
    np.testing.assert_allclose(probs.sum(-1), 1, atol=1e-5)


def test_golden_alerts_without_labels_are_counted_not_invented(tmp_path: Path):
    labels = tmp_path / "labels.csv"
    labels.write_text("objectId,label\nnobody,AGN\n")
    source, report = build_source(ZTF_GOLDEN, labels)
    assert len(source) == 0
    assert report.alerts == len(list(ZTF_GOLDEN.glob("*.avro")))
    assert report.unlabelled_objects > 0
