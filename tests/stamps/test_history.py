"""A frame carries the photometric history of the alert it was made from, across processes too."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np

from broker_plugin.config import LimitsSettings, SchemaRegistrySettings, StampSettings
from broker_plugin.prepare import PrepareConfig, Prepared, Preparer
from broker_plugin.records import PhotometryHistory
from broker_plugin.serde.alerts import AlertDecoder
from broker_plugin.serde.schemas import RubinSchemaStore
from broker_plugin.stamps import StampNormaliser
from tests.factories import ZTF_GOLDEN
from tests.serde.test_history import NEWEST, rubin_message_with, splice_history

ZTF_FILE = ZTF_GOLDEN / "2713305823315015047.avro"


def same_history(a: PhotometryHistory | None, b: PhotometryHistory | None) -> bool:
    if a is None or b is None:
        return a is b
    return all(np.array_equal(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))


def test_the_normaliser_copies_the_alerts_history_to_its_frame() -> None:
    [alert] = AlertDecoder(RubinSchemaStore()).decode_message(ZTF_FILE.read_bytes())
    assert alert.history is not None and len(alert.history) > 100
    frame = StampNormaliser(StampSettings(), LimitsSettings()).normalise(alert)
    assert frame.history is alert.history
    copy = pickle.loads(pickle.dumps(frame))  # as frames cross from a preparation process
    assert same_history(copy.history, frame.history)
    off = AlertDecoder(RubinSchemaStore(), history=False).decode_message(ZTF_FILE.read_bytes())[0]
    assert StampNormaliser(StampSettings(), LimitsSettings()).normalise(off).history is None


def test_a_preparer_hands_back_frames_with_their_history_and_counts_missing_ones() -> None:
    config = PrepareConfig(SchemaRegistrySettings(), LimitsSettings(), StampSettings(), ("g", "r", "i"))
    good = ZTF_FILE.read_bytes()
    malformed = splice_history(NEWEST, b"\x02\x01\x0a" + b"\xff" * 5 + b"\x00")
    prepared: Prepared = pickle.loads(pickle.dumps(Preparer(config).prepare([good, malformed])))
    [[first], [second]] = prepared.outcomes  # type: ignore[misc]
    assert first.frame is not None and first.frame.history is not None and len(first.frame.history) > 100
    assert same_history(first.alert.history, first.frame.history)
    assert second.alert.history is None
    assert prepared.planes_missing.get(("history", "malformed")) == 1
    off = Preparer(dataclasses.replace(config, history=False)).prepare([good])
    assert off.outcomes[0][0].frame.history is None  # type: ignore[index, union-attr]
    assert not off.planes_missing


def test_rubin_history_reaches_the_frame() -> None:
    raw = rubin_message_with(NEWEST, [(60_000.0, "g", 5.0, 1.0)], [(60_001.0, "g", 6.0, 1.0)])
    [alert] = AlertDecoder(RubinSchemaStore()).decode_message(raw)
    assert alert.history is not None and len(alert.history) == 2
