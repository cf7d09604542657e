"""Alert files on disk: single files, folders, and ``.tar``/``.tar.gz`` archives.

Each file is either an Avro container file (ZTF's per-alert files and nightly archives, Rubin archives)
or one raw Kafka message value (Confluent-framed Rubin alert). :func:`iter_alert_payloads` yields each
file's bytes with a name, streaming tar members one at a time (archives can be large). A file that
cannot be read, a corrupt archive and an archive member larger than the limit are yielded as an
:class:`AlertFileError` in place of the bytes, and the walk goes on.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import fastavro

from broker_plugin.exceptions import BrokerPluginError
from broker_plugin.serde.schemas import load_bundled_schema

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
#: Files a folder walk picks up (a file named explicitly is always read).
_ALERT_SUFFIXES = (".avro", ".alert", ".bin")


class AlertFileError(BrokerPluginError):
    """A file (or folder) that cannot be read."""

    reason = "unreadable_file"


class CorruptArchiveError(AlertFileError):
    """A ``.tar``/``.tar.gz`` that is not a readable archive from some point on (members before it count)."""

    reason = "corrupt_archive"


class ArchiveMemberTooLargeError(AlertFileError):
    """An archive member larger than ``limits.max_archive_member_bytes``: skipped without being read."""

    reason = "archive_member_too_large"


def _is_tar(path: Path) -> bool:
    return path.name.endswith(_TAR_SUFFIXES)


def iter_alert_payloads(
    path: str | Path, max_member_bytes: int | None = None
) -> Iterator[tuple[str, bytes | AlertFileError]]:
    """Yield ``(name, bytes)`` for every alert file under ``path``, in name order.

    Parameters
    ----------
    path
        A file (container, raw message or tar archive) or a folder (searched recursively).
    max_member_bytes
        Largest archive member read (``limits.max_archive_member_bytes``); ``None``: no limit.

    Yields
    ------
    tuple
        ``(name, bytes)``, or ``(name, error)`` for a file that cannot be read (an
        :class:`AlertFileError`): ``name`` is the file's path, or ``archive:member`` inside an archive.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    if path.is_dir():
        try:
            children = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        except OSError as exc:
            yield str(path), AlertFileError(f"cannot list the folder {path}: {exc}")
            return
        for child in children:
            if _is_tar(child) or child.suffix in _ALERT_SUFFIXES:
                yield from iter_alert_payloads(child, max_member_bytes)
        return
    if _is_tar(path):
        yield from _iter_archive(path, max_member_bytes)
        return
    try:
        yield str(path), path.read_bytes()
    except OSError as exc:
        yield str(path), AlertFileError(f"cannot read {path}: {exc}")


def _iter_archive(path: Path, max_member_bytes: int | None) -> Iterator[tuple[str, bytes | AlertFileError]]:
    """Members of one archive; an error ends the archive (a compressed stream cannot be resynchronised)."""
    where = str(path)
    try:
        with tarfile.open(path, mode="r:*") as archive:
            for member in archive:
                if not member.isfile() or Path(member.name).name.startswith("."):
                    continue
                where = f"{path.name}:{member.name}"
                if max_member_bytes is not None and member.size > max_member_bytes:
                    # Iterating on skips its data by seeking (compressed: by decompressing in chunks).
                    yield (
                        where,
                        ArchiveMemberTooLargeError(
                            f"archive member of {member.size} bytes > limit {max_member_bytes}"
                        ),
                    )
                    continue
                handle = archive.extractfile(member)
                if handle is not None:
                    yield where, handle.read()
                where = str(path)
    except Exception as exc:  # ReadError, EOFError, zlib/lzma errors, OSError...: all mean a corrupt archive
        yield where, CorruptArchiveError(f"{path}: corrupt archive ({type(exc).__name__}: {exc})")


def write_alert_container(
    fo: IO[bytes], records: Iterable[dict[str, Any]], version: str, codec: str = "deflate"
) -> None:
    """Write Rubin alert records of schema ``version`` as one Avro container file.

    Parameters
    ----------
    fo
        Binary file object to write to.
    records
        Alert records valid for that version (see :func:`~broker_plugin.serde.rubin.rubin_alert_record`).
    version
        Rubin schema version, e.g. ``"11.1"``.
    codec
        Avro block codec (``"null"`` or ``"deflate"``).
    """
    fastavro.writer(fo, load_bundled_schema(version).parsed, records, codec=codec)
