import io
import tarfile
from pathlib import Path

from broker_plugin.serde.files import iter_alert_payloads
from tests.factories import ZTF_GOLDEN, rubin_message


def test_folder_walk_is_sorted_and_skips_other_files(tmp_path: Path) -> None:
    (tmp_path / "b.avro").write_bytes(b"2")
    (tmp_path / "a.avro").write_bytes(b"1")
    (tmp_path / "notes.md").write_text("not an alert")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.avro").write_bytes(b"3")
    assert [raw for _, raw in iter_alert_payloads(tmp_path)] == [b"1", b"2", b"3"]


def test_tar_gz_members_are_streamed(tmp_path: Path) -> None:
    archive = tmp_path / "night.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(ZTF_GOLDEN.glob("*.avro"))[:3]:
            tar.add(path, arcname=f"night/{path.name}")
        raw = rubin_message()
        info = tarfile.TarInfo("night/rubin.avro")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    payloads = list(iter_alert_payloads(archive))
    assert len(payloads) == 4
    assert payloads[0][0].startswith("night.tar.gz:night/")
    assert payloads[-1][1] == raw
