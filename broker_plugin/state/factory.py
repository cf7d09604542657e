"""Open the state store a URL names (``Settings.state.url``)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from broker_plugin.exceptions import StateUrlError
from broker_plugin.state.base import StateStore
from broker_plugin.state.sqlite import SqliteStateStore


def redact_url(url: str) -> str:
    """``url`` without its password (safe to log or print)."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # e.g. a port that is not a number: show the scheme only
        return url.split("://", 1)[0] + "://..."
    if not password:
        return url
    return url.replace(f":{password}@", ":***@", 1)


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
    StateUrlError
        The scheme is neither SQLite nor PostgreSQL, or the URL names something that is not a state
        database (see the stores); the message names the URL without its password.
    psycopg.OperationalError
        The PostgreSQL server cannot be reached.
    """
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in ("postgresql", "postgres"):
        # Imported here: psycopg is needed only by deployments that share state through PostgreSQL.
        from broker_plugin.state.postgres import PostgresStateStore

        try:
            return PostgresStateStore(url, max_frames_per_object)
        except StateUrlError as exc:
            raise StateUrlError(f"{redact_url(url)}: {exc}") from exc
    if scheme == "sqlite":
        path = url.split("://", 1)[1]
        if not path.startswith("/") or path == "/":
            raise StateUrlError(f"expected sqlite:///path, got {url!r}")
        return _sqlite(Path(path[1:]), max_frames_per_object)
    if scheme == "":
        return _sqlite(Path(url), max_frames_per_object)
    raise StateUrlError(
        f"unknown state store scheme {scheme!r} in {redact_url(url)!r}: use sqlite:///path or postgresql://"
    )


def _sqlite(path: Path, max_frames_per_object: int) -> StateStore:
    if path.parent != Path():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateUrlError(f"cannot create the folder of the state database {path}: {exc}") from exc
    return SqliteStateStore(path, max_frames_per_object)
