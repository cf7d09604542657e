"""Alert files on disk: single files, folders, and ``.tar``/``.tar.gz`` archives.

Each file is either an Avro container file (ZTF's per-alert files and nightly archives, Rubin archives)
or one raw Kafka message value (Confluent-framed Rubin alert). :func:`iter_alert_payloads` yields each
file's bytes with a name, streaming tar members one at a time (archives can be large).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import fastavro

from broker_plugin.serde.schemas import load_bundled_schema

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
#: Files a folder walk picks up (a file named explicitly is always read).
_ALERT_SUFFIXES = (".avro", ".alert", ".bin")


def _is_tar(path: Path) -> bool:
    return path.name.endswith(_TAR_SUFFIXES)


def iter_alert_payloads(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, bytes)`` for every alert file under ``path``, in name order.

    Parameters
    ----------
    path
        A file (container, raw message or tar archive) or a folder (searched recursively).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            if _is_tar(child) or child.suffix in _ALERT_SUFFIXES:
                yield from iter_alert_payloads(child)
        return
    if _is_tar(path):
        with tarfile.open(path, mode="r:*") as archive:
            for member in archive:
                if member.isfile() and not Path(member.name).name.startswith("."):
                    handle = archive.extractfile(member)
                    if handle is not None:
                        yield f"{path.name}:{member.name}", handle.read()
        return
    yield str(path), path.read_bytes()


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
