import io
from pathlib import Path

import pytest

from broker_plugin.commands.replay import collect_messages, replay
from broker_plugin.config import KafkaSettings
from broker_plugin.serde.alerts import AlertDecoder
from broker_plugin.serde.files import write_alert_container
from broker_plugin.serde.schemas import RubinSchemaStore
from tests.factories import ZTF_GOLDEN, rubin_record


def rubin_archive(path: Path, n: int) -> None:
    records = [
        rubin_record(diaSourceId=i, diaObjectId=5, midpointMjdTai=60_010.0 - i, cutout=b"fits")
        for i in range(n)
    ]  # fmt: skip
    with path.open("wb") as handle:
        write_alert_container(handle, records, "11.1")


def test_messages_are_framed_per_rubin_record_and_whole_ztf_files_in_time_order(tmp_path: Path) -> None:
    rubin_archive(tmp_path / "rubin.avro", 3)
    for path in sorted(ZTF_GOLDEN.glob("*.avro"))[:2]:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    decoder = AlertDecoder(RubinSchemaStore())
    messages, unreadable = collect_messages(tmp_path, decoder)
    assert unreadable == 0 and len(messages) == 5
    assert [m.midpointMjdTai for m in messages] == sorted(m.midpointMjdTai for m in messages)
    rubin = [m for m in messages if m.value[0] == 0]
    assert len(rubin) == 3 and all(int.from_bytes(m.value[1:5], "big") == 1101 for m in rubin)
    assert [decoder.decode_message(m.value)[0].diaSourceId for m in rubin] == [2, 1, 0]
    ztf = [m for m in messages if m.value.startswith(b"Obj\x01")]
    assert {m.value for m in ztf} == {p.read_bytes() for p in sorted(ZTF_GOLDEN.glob("*.avro"))[:2]}


@pytest.mark.integration
def test_replay_into_a_real_broker(kafka_bootstrap: str, tmp_path: Path) -> None:
    from tests.integration.support import create_topics, read_all, unique

    rubin_archive(tmp_path / "rubin.avro", 4)
    topic = unique("replay")
    create_topics(kafka_bootstrap, topic)
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    assert replay(tmp_path, topic, settings, rate=200.0) == 4
    messages = read_all(kafka_bootstrap, topic, 4)
    assert len(messages) == 4
    assert all(m.key() is None and dict(m.headers())["producer_timestamp"] for m in messages)
    assert io.BytesIO(messages[0].value()).read(1) == b"\x00"


def test_reading_the_archive_shows_progress_only_when_asked(tmp_path: Path) -> None:
    from broker_plugin.commands.demo import DEMO_DATA

    decoder = AlertDecoder(RubinSchemaStore())
    quiet = io.StringIO()  # not a terminal: no bar by default
    messages, _ = collect_messages(DEMO_DATA, decoder, err=quiet)
    assert len(messages) == 96 and quiet.getvalue() == ""
    shown = io.StringIO()
    collect_messages(DEMO_DATA, decoder, show_progress=True, err=shown)
    final = shown.getvalue().split("\r")[-1]
    assert final.startswith("reading the archive:") and " files/s, 96 alerts]" in final
