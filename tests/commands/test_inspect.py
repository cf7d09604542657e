import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from broker_plugin.commands.inspect import run_inspect
from broker_plugin.config import Settings
from tests.factories import ZTF_GOLDEN, rubin_message, shared_ztf_dir

SHARED_ZTF = shared_ztf_dir()


def lines(path: Path, settings: Settings) -> tuple[int, list[dict]]:
    out = io.StringIO()
    status = run_inspect(path, settings, out)
    return status, [json.loads(line) for line in out.getvalue().splitlines()]


def test_golden_ztf_alerts_are_all_usable(settings: Settings) -> None:
    status, rows = lines(ZTF_GOLDEN, settings)
    assert status == 0 and len(rows) == 6
    assert all(r["status"] == "ok" and r["frameShape"] == [32, 32] for r in rows)
    edge = {r["diaSourceId"]: r for r in rows}[1786198313215015016]
    assert edge["originalShape"] == [63, 45] and "EDGE_TRUNCATED" in edge["flags"]


@pytest.mark.skipif(SHARED_ZTF is None, reason="the shared ZTF sample is not on this machine")
def test_every_real_ztf_alert_decodes_and_normalises(settings: Settings) -> None:
    status, rows = lines(SHARED_ZTF, settings)
    assert len(rows) == 145
    assert status == 0, [r for r in rows if r["status"] != "ok"]


def test_errors_are_reported_per_alert_and_the_walk_goes_on(tmp_path: Path, settings: Settings) -> None:
    (tmp_path / "1_good.avro").write_bytes(rubin_message("9.0"))
    (tmp_path / "2_bad.avro").write_bytes(b"\x00\x00\x00\x10\x00junk")
    (tmp_path / "3_nocutout.avro").write_bytes(rubin_message("11.1", cutout=None))
    (tmp_path / "4_good.avro").write_bytes(rubin_message("3.0"))
    status, rows = lines(tmp_path, settings)
    assert status == 1
    assert [r["status"] for r in rows] == ["ok", "error", "error", "ok"]
    assert rows[1]["reason"] == "unknown_schema"
    assert rows[2]["reason"] == "missing_cutout" and rows[2]["diaSourceId"] == 101


def test_cli_reads_a_tar_gz(tmp_path: Path) -> None:
    archive = tmp_path / "alerts.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(ZTF_GOLDEN.glob("*.avro"))[:2]:
            tar.add(path, arcname=path.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_PLUGIN_")}
    result = subprocess.run(
        [sys.executable, "-m", "broker_plugin", "inspect", str(archive)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 2 and {r["survey"] for r in rows} == {"ztf"}
