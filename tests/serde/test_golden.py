"""Every real alert decodes exactly as it did before the decoder was hardened.

``data/decoded_alerts.json`` holds each alert's fields, floats as exact hex, the cutout as its SHA-256.
The real ZTF alerts' entries were written by the decoder before validation and resource limits existed:
validation may only reject hostile input; it must not change one bit of what a real alert becomes. The
bundled demo archive's entries were written when that archive was last regenerated.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from broker_plugin.records import Alert
from broker_plugin.serde.alerts import AlertDecoder, iter_payload
from broker_plugin.serde.files import iter_alert_payloads
from tests.factories import ZTF_GOLDEN, shared_ztf_dir

EXPECTED = json.loads((Path(__file__).parent / "data" / "decoded_alerts.json").read_text())
DEMO = Path(__file__).resolve().parents[2] / "broker_plugin" / "demo_data"


def _hex(value: float | None) -> str | None:
    return value.hex() if isinstance(value, float) else value


def row(alert: Alert) -> dict[str, Any]:
    """The snapshot form of an alert (exact floats, hashed cutout)."""
    ztf = alert.ztf
    return {
        "survey": str(alert.survey),
        "diaObjectId": alert.diaObjectId,
        "diaSourceId": alert.diaSourceId,
        "midpointMjdTai": _hex(alert.midpointMjdTai),
        "band": alert.band,
        "ra": _hex(alert.ra),
        "dec": _hex(alert.dec),
        "psfFlux": _hex(alert.psfFlux),
        "psfFluxErr": _hex(alert.psfFluxErr),
        "cutoutDifference": (
            None if alert.cutoutDifference is None else hashlib.sha256(alert.cutoutDifference).hexdigest()
        ),
        "schemaVersion": alert.schemaVersion,
        "ztf": None
        if ztf is None
        else {
            "magzpsci": _hex(ztf.magzpsci),
            "isdiffpos": ztf.isdiffpos,
            "xpos": _hex(ztf.xpos),
            "ypos": _hex(ztf.ypos),
        },
    }


def decoded(folder: Path, decoder: AlertDecoder) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for name, raw in iter_alert_payloads(folder):
        items = list(iter_payload(raw, decoder))
        assert all(isinstance(item, Alert) for item in items), [i for i in items if not isinstance(i, Alert)]
        out[Path(name).name] = [row(item) for item in items]
        if not raw.startswith(b"Obj"):
            continue
        # The Kafka path (decode_message) and the file path (iter_payload) agree.
        assert [row(a) for a in decoder.decode_message(raw)] == out[Path(name).name]
    return out


@pytest.mark.parametrize(("key", "folder"), [("golden", ZTF_GOLDEN), ("demo", DEMO)])
def test_real_alerts_decode_exactly_as_before(key: str, folder: Path, decoder: AlertDecoder) -> None:
    got = decoded(folder, decoder)
    assert set(got) == set(EXPECTED[key])
    for name, rows in EXPECTED[key].items():
        assert got[name] == rows, name
    assert sum(len(rows) for rows in got.values()) == {"golden": 6, "demo": 96}[key]


def test_shared_ztf_alerts_decode_exactly_as_before(decoder: AlertDecoder) -> None:
    folder = shared_ztf_dir()
    if folder is None:
        pytest.skip("the 145 shared ZTF alerts are not on this machine")
    got = decoded(folder, decoder)
    assert got == EXPECTED["shared"] and len(got) == 145
