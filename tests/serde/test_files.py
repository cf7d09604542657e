import io
import os
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np

from broker_plugin.serde.files import (
    AlertFileError,
    ArchiveMemberTooLargeError,
    CorruptArchiveError,
    iter_alert_payloads,
)
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


def tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def test_a_corrupt_archive_is_one_error_and_the_walk_goes_on(tmp_path: Path) -> None:
    (tmp_path / "a.avro").write_bytes(b"1")
    (tmp_path / "b.tar.gz").write_bytes(b"\x1f\x8b\x08\x00 this is not gzip data at all")
    (tmp_path / "c.tar").write_bytes(b"\x00" * 10 + b"not a tar header" * 40)
    (tmp_path / "d.avro").write_bytes(b"2")
    out = list(iter_alert_payloads(tmp_path))
    assert [raw for _, raw in out if isinstance(raw, bytes)] == [b"1", b"2"]
    errors = [(name, raw) for name, raw in out if not isinstance(raw, bytes)]
    assert [type(e) for _, e in errors] == [CorruptArchiveError, CorruptArchiveError]
    assert errors[0][0].endswith("b.tar.gz") and errors[0][1].reason == "corrupt_archive"
    assert "b.tar.gz" in str(errors[0][1]) and errors[1][0].endswith("c.tar")


def test_a_truncated_archive_yields_its_first_members_then_one_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    members = {f"m{i}.avro": rng.bytes(20_000) for i in range(6)}  # incompressible: the cut lands late
    whole = tar_gz(tmp_path / "whole.tar.gz", members).read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(whole[: len(whole) * 2 // 3])
    out = list(iter_alert_payloads(tmp_path / "cut.tar.gz"))
    good = [raw for _, raw in out if isinstance(raw, bytes)]
    assert 1 <= len(good) < 6 and good == [members[f"m{i}.avro"] for i in range(len(good))]
    (name, error), = [(n, r) for n, r in out if not isinstance(r, bytes)]  # fmt: skip
    assert isinstance(error, CorruptArchiveError) and "cut.tar.gz" in name


class Zeros(io.RawIOBase):
    """``n`` zero bytes, read in pieces (a large member without holding it in memory)."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        k = min(len(buffer), self.left)
        buffer[:k] = b"\x00" * k
        self.left -= k
        return k


def test_an_oversize_member_is_an_error_and_is_never_read_whole(tmp_path: Path) -> None:
    archive = tmp_path / "night.tar.gz"
    big = 64_000_000
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for name, raw in (("a.avro", b"first"), ("huge.avro", None), ("z.avro", b"last")):
            info = tarfile.TarInfo(name)
            info.size = big if raw is None else len(raw)
            tar.addfile(info, Zeros(big) if raw is None else io.BytesIO(raw))
    tracemalloc.start()
    try:
        out = list(iter_alert_payloads(archive, max_member_bytes=10_000_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [name for name, _ in out] == [
        "night.tar.gz:a.avro",
        "night.tar.gz:huge.avro",
        "night.tar.gz:z.avro",
    ]
    assert out[0][1] == b"first" and out[2][1] == b"last"
    error = out[1][1]
    assert isinstance(error, ArchiveMemberTooLargeError) and error.reason == "archive_member_too_large"
    assert "64000000" in str(error) and "10000000" in str(error)
    assert peak < 8_000_000  # skipped by seeking through the stream, not read
    assert len(list(iter_alert_payloads(archive))) == 3  # no limit given: read as before


def test_an_unreadable_file_is_an_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked.avro"
    locked.write_bytes(b"x")
    locked.chmod(0)
    # Root reads any file; reading a process's own memory from offset 0 fails for everyone (EIO).
    path = Path("/proc/self/mem") if os.geteuid() == 0 else locked
    ((name, error),) = iter_alert_payloads(path)
    assert name == str(path) and isinstance(error, AlertFileError) and error.reason == "unreadable_file"
