"""Property suite of the offline commands: any mutated or hostile file among good ones.

``inspect`` and ``classify`` must never raise, must print strict JSON only (no NaN), must report the bad
file as error lines and go on, and must still classify the good alerts around it.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker_plugin.commands.classify import _classify
from broker_plugin.commands.inspect import run_inspect
from broker_plugin.config import Settings
from broker_plugin.factory import build_parts
from tests.factories import ZTF_GOLDEN, object_alerts, rubin_message
from tests.hostile import HOSTILE

GOOD = object_alerts(77, 4, first_source=7700)
SOURCES = [
    rubin_message(diaSourceId=7800, diaObjectId=78),
    (ZTF_GOLDEN / "2713305823315015047.avro").read_bytes(),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A real alert with a few byte edits (flip, overwrite, insert, truncate), or a hostile message."""
    if draw(st.booleans()):
        name = draw(st.sampled_from(sorted(n for n in HOSTILE if "bomb" not in n)))
        return HOSTILE[name][0](7900)
    raw = bytearray(draw(st.sampled_from(SOURCES)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "overwrite", "insert", "truncate"]))
        at = draw(st.integers(0, len(raw) - 1))
        if kind == "flip":
            raw[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            raw[at : at + 8] = draw(st.binary(min_size=8, max_size=8))
        elif kind == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del raw[max(at, 1) :]
    return bytes(raw)


def strict_rows(text: str) -> list[dict]:
    def refuse(constant: str) -> None:
        raise ValueError(f"non-strict JSON constant {constant}")

    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


@pytest.fixture(scope="module")
def offline(model_artifact, tmp_path_factory):
    settings_ = Settings(_env_file=None)
    model = {"artifact": model_artifact, "min_frames": 3, "device": "cpu"}
    settings_ = settings_.model_copy(update={
        "model": settings_.model.model_copy(update=model),
        "state": settings_.state.model_copy(
            update={"url": f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'state.db'}"}
        ),
    })  # fmt: skip
    parts = build_parts(settings_)
    yield settings_, parts
    parts.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=mutated())
def test_offline_commands_survive_any_mutated_file(offline, bad: bytes) -> None:
    settings_, parts = offline
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for k, raw in enumerate(GOOD):
            (folder / f"a-{k}.avro").write_bytes(raw)
        (folder / "b-bad.avro").write_bytes(bad)
        out = io.StringIO()
        assert run_inspect(folder, settings_, out) in (0, 1)
        rows = strict_rows(out.getvalue())
        assert {r["source"] for r in rows} >= {str(folder / f"a-{k}.avro") for k in range(4)}
        assert all(r["status"] in ("ok", "error") and (r["status"] == "ok" or r["reason"]) for r in rows)
        out = io.StringIO()
        assert _classify(folder, parts, settings_, out) in (0, 1)
        rows = strict_rows(out.getvalue())
        classified = {r["diaSourceId"] for r in rows if "predictedClass" in r}
        assert 7703 in classified  # the good object's 4th alert is classified whatever the bad file did
        assert all(r.get("reason") for r in rows if r.get("status") == "error")
