"""The resource bombs of ``test_bombs`` as science and template cutouts: the plane is dropped, quickly and in
the same memory bound, and the alert is used.

Measured as ``test_bombs`` measures (a fresh process, peak RSS above the level before the call and
tracemalloc's peak), with a valid difference beside each bomb: the alert's frame is made every time, and
the bomb's plane is missing for the reason the same bytes get as a difference.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.stamps.hostile import gzip_fits, rubin_cutout, ztf_fits
from tests.stamps.test_bombs import BOMB_SECONDS, CASE_NAMES, ROOT, cases

CHILD = r"""
import json, re, resource, sys, time, tracemalloc
from pathlib import Path

from broker_plugin.config import LimitsSettings, StampSettings
from broker_plugin.records import Alert, Survey, ZtfCutoutContext
from broker_plugin.stamps import StampNormaliser


def alert(survey, difference, science, template):
    if survey == "ztf":
        ctx = ZtfCutoutContext(26.0, True, 500.0, 500.0)
        return Alert(Survey.ZTF, "ZTF24a", 1, 60000.0, "r", 10.0, 20.0, None, None, difference, "4.02", ctx,
                     science, template)
    return Alert(Survey.RUBIN, 7, 101, 60500.0, "g", 150.0, 2.0, 1.0, 1.0, difference, "11.1", None,
                 science, template)


def status_kb(field):
    return int(re.search(field + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def reset_peak():
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return status_kb("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_kb():
    try:
        return status_kb("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


normaliser = StampNormaliser(StampSettings(), LimitsSettings())
heard = []
normaliser.watch_missing_planes(lambda plane, reason: heard.append((plane, reason)))


def run(item, plane):
    heard.clear()
    frame = normaliser.normalise(item)  # never raises: the difference is valid
    if getattr(frame, plane) is not None:
        return "accepted"
    (missing,) = heard
    assert missing[0] == plane
    return missing[1]


cases = json.loads(Path(sys.argv[1]).read_text())
warm = {survey: Path(path).read_bytes() for survey, path in cases.pop("warm").items()}
for survey, raw in warm.items():
    assert run(alert(survey, raw, raw, raw), "science") == "accepted"
results = {}
for name, (survey, path) in cases.items():
    bomb, good = Path(path).read_bytes(), warm[survey]
    for plane in ("science", "template"):
        item = alert(survey, good, *((bomb, good) if plane == "science" else (good, bomb)))
        before = reset_peak()
        start = time.perf_counter()
        reason = run(item, plane)
        seconds = time.perf_counter() - start
        rss_mb = (peak_kb() - before) / 1024
        tracemalloc.start()
        run(item, plane)
        traced_mb = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        results[f"{name}/{plane}"] = dict(reason=reason, seconds=seconds, rss_mb=rss_mb, traced_mb=traced_mb)
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, float | str]]:
    """Every case, in each plane, measured in one fresh process (imports paid once)."""
    folder = tmp_path_factory.mktemp("plane-bombs")
    manifest: dict[str, object] = {}
    for name, (survey, raw, _, _) in cases().items():
        (folder / name).write_bytes(raw)
        manifest[name] = (survey, str(folder / name))
    (folder / "warm-ztf").write_bytes(gzip_fits(ztf_fits(np.ones((63, 63)))))
    (folder / "warm-rubin").write_bytes(rubin_cutout())
    manifest["warm"] = {"ztf": str(folder / "warm-ztf"), "rubin": str(folder / "warm-rubin")}
    (folder / "cases.json").write_text(json.dumps(manifest))
    args = [sys.executable, "-c", CHILD, str(folder / "cases.json")]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("plane", ["science", "template"])
@pytest.mark.parametrize("name", CASE_NAMES)
def test_bomb_as_a_plane_is_dropped_quickly_in_bounded_memory(name: str, plane: str, measured) -> None:
    _, raw, reason, bound_mb = cases()[name]
    result = measured[f"{name}/{plane}"]
    print(name, plane, len(raw), result)
    assert result["reason"] == reason
    assert result["rss_mb"] < bound_mb and result["traced_mb"] < bound_mb
    assert result["seconds"] < BOMB_SECONDS
