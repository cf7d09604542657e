"""Resource bombs are rejected quickly and within a stated memory bound, measured in a fresh process.

Each case runs :data:`CHILD` in a subprocess: it warms the normaliser up on a valid cutout of the same
survey (so lazy imports do not count), resets the process's peak resident size (``/proc/self/clear_refs``;
where that is unavailable the ``ru_maxrss`` high-water mark is used, which can only under-report), runs the
bomb, and reports the reason, the time, the peak RSS above the level before the call, and tracemalloc's peak
of Python and numpy allocations during a second run. Before the fixes a 1 GiB gzip bomb peaked at 2.36 GB
and one inflating to a 16384^2 FITS at 3.39 GB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from tests.stamps.hostile import (
    fits_bytes,
    gzip_bomb,
    gzip_fits,
    image_cards,
    linear_wcs,
    rubin_cutout,
    ztf_fits,
)

ROOT = Path(__file__).resolve().parents[2]
#: Peak memory a rejected bomb may take above the process's level before the call [MB].
BOMB_BOUND_MB = 64
#: ... and the largest accepted work (the biggest cutout, the finest pixel scale), a few 8 MB arrays [MB].
WORK_BOUND_MB = 200
#: Wall time a bomb may take to be rejected [s] (measured: milliseconds; generous for a loaded machine).
BOMB_SECONDS = 1.0

CHILD = r"""
import json, re, resource, sys, time, tracemalloc
from pathlib import Path

from broker_plugin.config import LimitsSettings, StampSettings
from broker_plugin.exceptions import StampError
from broker_plugin.records import Alert, Survey, ZtfCutoutContext
from broker_plugin.stamps import StampNormaliser


def alert(survey, cutout):
    if survey == "ztf":
        ctx = ZtfCutoutContext(26.0, True, 500.0, 500.0)
        return Alert(Survey.ZTF, "ZTF24a", 1, 60000.0, "r", 10.0, 20.0, None, None, cutout, "4.02", ctx)
    return Alert(Survey.RUBIN, 7, 101, 60500.0, "g", 150.0, 2.0, 1.0, 1.0, cutout, "11.1")


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


def run(normaliser, item):
    try:
        normaliser.normalise(item)
        return "accepted"
    except StampError as exc:
        return exc.reason


normaliser = StampNormaliser(StampSettings(), LimitsSettings())
cases = json.loads(Path(sys.argv[1]).read_text())
for survey, warm in cases.pop("warm").items():
    assert run(normaliser, alert(survey, Path(warm).read_bytes())) == "accepted"
results = {}
for name, (survey, path) in cases.items():
    item = alert(survey, Path(path).read_bytes())
    before = reset_peak()
    start = time.perf_counter()
    reason = run(normaliser, item)
    seconds = time.perf_counter() - start
    rss_mb = (peak_kb() - before) / 1024
    tracemalloc.start()
    run(normaliser, item)
    traced_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    results[name] = {"reason": reason, "seconds": seconds, "rss_mb": rss_mb, "traced_mb": traced_mb}
print(json.dumps(results))
"""


@cache
def cases() -> dict[str, tuple[str, bytes, str, float]]:
    """``{name: (survey, cutout, expected reason, memory bound [MB])}``: bombs, then valid heavy work."""
    side = 16384
    header_16384 = fits_bytes(image_cards(side, side, -32))  # the header block alone: the data never follow
    bomb = {
        "gzip-1GiB-zeros": ("ztf", gzip_bomb(b"", 1 << 30)),
        "gzip-fits-16384sq": ("ztf", gzip_bomb(header_16384, len(header_16384) + side * side * 4)),
        "gzip-fits-declares-100000sq": ("ztf", gzip_fits(fits_bytes(image_cards(100_000, 100_000)))),
        "fits-declares-16384sq": ("rubin", fits_bytes(image_cards(side, side, -32, **linear_wcs()))),
        "fits-declares-100000sq": ("rubin", fits_bytes(image_cards(100_000, 100_000, -64, **linear_wcs()))),
        "fits-over-max-bytes": ("rubin", rubin_cutout() + bytes(4_000_000)),
    }
    out = {name: (survey, raw, "cutout_too_large", BOMB_BOUND_MB) for name, (survey, raw) in bomb.items()}
    more_data = fits_bytes(image_cards(1000, 1000, -32, **linear_wcs()), bytes(4000))
    out["fits-declares-more-data"] = ("rubin", more_data, "corrupt_cutout", BOMB_BOUND_MB)
    # Valid cutouts at the limits: the most pixels the limits admit (8 MB as float64), and the finest
    # pixel scale (20 x 20 samples per frame pixel).
    big = fits_bytes(
        image_cards(1000, 1000, 8, **linear_wcs(crpix=500.5)), np.ones((1000, 1000), "u1").tobytes()
    )
    fine = fits_bytes(
        image_cards(512, 512, -32, **linear_wcs(0.02 / 3600, 256.5)), np.ones((512, 512), ">f4").tobytes()
    )
    out["fits-1000sq-int8"] = ("rubin", big, "accepted", WORK_BOUND_MB)
    out["fits-finest-scale"] = ("rubin", fine, "accepted", WORK_BOUND_MB)
    # CPU: the most header the walker reads (MAX_HDUS HDUs of full-length headers, no image), the same
    # with a scaled image last (astropy parses all of them), and many empty gzip members.
    filler = [(f"K{i:07d}", f"{i}.5") for i in range(32 * 36 - 20)]
    empty = fits_bytes([("SIMPLE", "T"), ("BITPIX", "8"), ("NAXIS", "0"), *filler])
    table = fits_bytes(
        [
            ("XTENSION", "'BINTABLE'"),
            ("BITPIX", "8"),
            ("NAXIS", "0"),
            ("PCOUNT", "0"),
            ("GCOUNT", "1"),
            *filler,
        ]
    )
    out["fits-long-headers-no-image"] = ("rubin", empty + table * 3, "corrupt_cutout", BOMB_BOUND_MB)
    scaled = [("XTENSION", "'IMAGE'"), *image_cards(**linear_wcs())[1:], ("BSCALE", "1.5"), *filler[:-10]]
    image = fits_bytes(scaled, np.ones((40, 40), ">f4").tobytes())
    out["fits-long-headers-astropy"] = ("rubin", empty + table * 2 + image, "accepted", BOMB_BOUND_MB)
    out["gzip-75000-members"] = ("ztf", gzip_fits(b"") * 75_000, "corrupt_cutout", BOMB_BOUND_MB)
    sin = {**linear_wcs(), "CTYPE1": "'RA---SIN'", "CTYPE2": "'DEC--SIN'"}
    long_sin = fits_bytes(image_cards(**sin) + filler, np.ones((40, 40), ">f4").tobytes())
    out["fits-long-header-astropy-wcs"] = ("rubin", long_sin, "accepted", BOMB_BOUND_MB)
    return out


CASE_NAMES = [
    "gzip-1GiB-zeros", "gzip-fits-16384sq", "gzip-fits-declares-100000sq", "fits-declares-16384sq",
    "fits-declares-100000sq", "fits-over-max-bytes", "fits-declares-more-data", "fits-1000sq-int8",
    "fits-finest-scale", "fits-long-headers-no-image", "fits-long-headers-astropy", "gzip-75000-members",
    "fits-long-header-astropy-wcs",
]  # fmt: skip


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, float | str]]:
    """Every case measured in one fresh process (imports paid once)."""
    assert list(cases()) == CASE_NAMES
    folder = tmp_path_factory.mktemp("bombs")
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


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bomb_or_heavy_cutout_is_handled_quickly_in_bounded_memory(name: str, measured) -> None:
    _, raw, reason, bound_mb = cases()[name]
    result = measured[name]
    print(name, len(raw), result)  # shown with -s: the numbers the README quotes
    assert result["reason"] == reason
    assert result["rss_mb"] < bound_mb and result["traced_mb"] < bound_mb
    assert result["seconds"] < BOMB_SECONDS
