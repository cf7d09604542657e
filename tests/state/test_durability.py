"""SQLite keeps every frame whose ``add_frames`` returned, across a kill -9 of the writing process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from broker_plugin.state.factory import open_state_store
from broker_plugin.state.sqlite import SqliteStateStore

REPO = Path(__file__).resolve().parents[2]

# Adds one frame per call, forever, and says so after each call returned.
WRITER = """
import sys
from broker_plugin.state.sqlite import SqliteStateStore
from tests.state.conftest import make_frame

store = SqliteStateStore(sys.argv[1], 10_000)
i = 0
while True:
    store.add_frames(f"rubin:{i % 3}", [make_frame(i, float(i))])
    print("added", i, flush=True)
    i += 1
"""


def test_sqlite_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, cwd=REPO, env=env
    )
    reported: list[int] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            reported.append(int(line.split()[1]))
            if len(reported) == 40:
                break
    finally:
        # Mid-stream: the writer is inside its next transaction or about to be.
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert len(reported) == 40
    with SqliteStateStore(path) as store:
        stored = {f.diaSourceId for k in range(3) for f in store.frames(f"rubin:{k}")}
        assert set(reported) <= stored
        assert store.object_count() == 3


def test_factory_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_state_store("sqlite:///rel/state.db", 5) as store:
        assert isinstance(store, SqliteStateStore)
        assert store.path == Path("rel/state.db")
        assert store.max_frames_per_object == 5
    absolute = tmp_path / "abs" / "state.db"
    with open_state_store(f"sqlite:///{absolute}", 5) as store:
        assert store.path == absolute
    with open_state_store(str(tmp_path / "bare.db"), 5) as store:
        assert isinstance(store, SqliteStateStore)
    assert absolute.exists() and (tmp_path / "rel" / "state.db").exists()


def test_factory_rejects_unknown_schemes() -> None:
    for url in ("redis://localhost", "sqlite://", "sqlite://host/file.db"):
        with pytest.raises(ValueError):
            open_state_store(url, 5)


@pytest.mark.integration
def test_factory_postgres_url(postgres_schema: str) -> None:
    from broker_plugin.state.postgres import PostgresStateStore
    from tests.state.conftest import POSTGRES_DSN

    # search_path puts the default-named tables in this session's schema (dropped afterwards).
    url = f"{POSTGRES_DSN}{'&' if '?' in POSTGRES_DSN else '?'}options=-csearch_path%3D{postgres_schema}"
    with open_state_store(url, 7) as store:
        assert isinstance(store, PostgresStateStore)
        assert store.max_frames_per_object == 7
        assert store.object_count() == 0
