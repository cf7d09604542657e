"""Open the state store a URL names (``Settings.state.url``)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from broker_plugin.state.base import StateStore
from broker_plugin.state.sqlite import SqliteStateStore


def open_state_store(url: str, max_frames_per_object: int) -> StateStore:
    """The store for ``url``.

    Parameters
    ----------
    url
        ``sqlite:///relative/file.db`` or ``sqlite:////absolute/file.db`` (SQLAlchemy's convention: the
        path is what follows ``sqlite:///``), a bare file path, or ``postgresql://...`` /
        ``postgres://...`` (any libpq URL; PostgreSQL needs ``psycopg``).
    max_frames_per_object
        Newest frames kept per object.

    Raises
    ------
    ValueError
        If the scheme is neither SQLite nor PostgreSQL.
    """
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in ("postgresql", "postgres"):
        # Imported here: psycopg is needed only by deployments that share state through PostgreSQL.
        from broker_plugin.state.postgres import PostgresStateStore

        return PostgresStateStore(url, max_frames_per_object)
    if scheme == "sqlite":
        path = url.split("://", 1)[1]
        if not path.startswith("/") or path == "/":
            raise ValueError(f"expected sqlite:///path, got {url!r}")
        return _sqlite(Path(path[1:]), max_frames_per_object)
    if scheme == "":
        return _sqlite(Path(url), max_frames_per_object)
    raise ValueError(f"unknown state store scheme {scheme!r} in {url!r}: use sqlite:///path or postgresql://")


def _sqlite(path: Path, max_frames_per_object: int) -> StateStore:
    if path.parent != Path():
        path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteStateStore(path, max_frames_per_object)
