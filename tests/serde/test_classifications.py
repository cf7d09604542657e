import json
from pathlib import Path

import fastavro
import pytest

from broker_plugin.exceptions import AlertDecodeError
from broker_plugin.records import Classification, ClassProbability, Survey
from broker_plugin.serde.classifications import (
    classification_key,
    classification_schema,
    decode_classification,
    encode_classification,
    schema_path,
)

SAMPLE = Path(schema_path()).parent / "sample_data" / "classification.json"


def sample_classification(object_id: int | str = 123) -> Classification:
    return Classification(
        diaObjectId=object_id,
        diaSourceId=456,
        survey=Survey.RUBIN,
        midpointMjdTai=60_001.5,
        predictedClass="SNIa",
        classes=(
            ClassProbability("AGN", 0.1, 0.01),
            ClassProbability("SNIa", 0.7, 0.05),
            ClassProbability("Variable", 0.1, 0.02),
            ClassProbability("SNOther", 0.1, 0.03),
        ),
        nFrames=12,
        bandsUsed=("g", "r"),
        firstMidpointMjdTai=59_990.0,
        modelName="convention-default",
        modelVersion="1.0.0",
        modelChecksum="ab" * 32,
        ensembleSize=3,
        alertTimestamp=1_767_225_600_123,
        publishTimestamp=1_767_225_600_456,
        pluginVersion="0.1.0",
    )


def test_every_field_documents_itself() -> None:
    schema = json.loads(schema_path().read_text())
    assert schema["namespace"] == "broker_plugin.v1_0"
    for field in schema["fields"]:
        assert len(field.get("doc", "")) > 15, field["name"]
    names = {f["name"] for f in schema["fields"]}
    assert {
        "diaObjectId",
        "diaSourceId",
        "midpointMjdTai",
        "classes",
        "modelChecksum",
        "alertTimestamp",
        "publishTimestamp",
        "bandsUsed",
        "nFrames",
    } <= names


def test_sample_data_validates() -> None:
    records = json.loads(SAMPLE.read_text())
    assert len(records) >= 2
    for record in records:
        assert fastavro.validation.validate(record, classification_schema(), raise_errors=True)
        assert sum(c["probability"] for c in record["classes"]) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("object_id", [123, "ZTF21acqeepb"])
@pytest.mark.parametrize("schema_id", [None, 42])
def test_round_trip(object_id: int | str, schema_id: int | None) -> None:
    original = sample_classification(object_id)
    raw = encode_classification(original, schema_id=schema_id)
    decoded = decode_classification(raw, framed=schema_id is not None)
    assert decoded.diaObjectId == object_id
    assert decoded.classes[1].probability == pytest.approx(0.7)
    assert decoded.alertTimestamp == original.alertTimestamp
    assert decoded.publishTimestamp == original.publishTimestamp
    assert decoded.bandsUsed == ("g", "r") and decoded.survey == "rubin"
    assert classification_key(original) == str(object_id).encode()


def test_garbage_is_a_typed_error() -> None:
    with pytest.raises(AlertDecodeError):
        decode_classification(b"\x01\x02")
