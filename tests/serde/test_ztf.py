import pytest

from broker_plugin.records import Survey
from broker_plugin.serde.alerts import AlertDecoder
from tests.factories import ZTF_GOLDEN


def test_ztf_alert_keeps_ztf_ids_and_names(decoder: AlertDecoder) -> None:
    (alert,) = decoder.decode_message((ZTF_GOLDEN / "2713305823315015047.avro").read_bytes())
    assert alert.survey is Survey.ZTF
    assert alert.diaObjectId == "ZTF24aaqnriz" and alert.diaSourceId == 2713305823315015047
    assert alert.band == "g"  # fid 1
    # jd 2460467.8058218 (UTC, start of a 180 s exposure) -> mid-point (+90 s) in TAI (+37 s).
    assert alert.midpointMjdTai == pytest.approx(60467.3058218 + 127 / 86400, abs=1e-7)
    assert alert.ztf is not None and alert.ztf.isdiffpos and alert.ztf.magzpsci == pytest.approx(28.16814)
    assert alert.cutoutDifference[:2] == b"\x1f\x8b"  # gzipped FITS


def test_isdiffpos_f_is_a_negative_flux(decoder: AlertDecoder) -> None:
    (alert,) = decoder.decode_message((ZTF_GOLDEN / "2866098621415010017.avro").read_bytes())
    assert alert.ztf is not None and not alert.ztf.isdiffpos
    assert alert.psfFlux is not None and alert.psfFlux < 0 and alert.band == "r"
