"""The alert writer's files decode with the service's own decoder, and the bundled demo archive."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from broker_plugin.commands.inspect import inspect_path
from broker_plugin.config import Settings
from broker_plugin.serde.alerts import iter_container
from broker_plugin.serde.schemas import latest_rubin_version
from train.config import CLASSES
from train.data.alerts import write_alerts
from train.data.cadence import Survey
from train.data.population import catalogue, make_object

from .conftest import small_config

DEMO = Path(__file__).resolve().parents[2] / "broker_plugin" / "demo_data"


def _records(folder: Path) -> list[dict]:
    out = []
    for path in sorted(folder.glob("*.avro")):
        with path.open("rb") as handle:
            out += [record for record, _ in iter_container(handle)]
    return out


@pytest.fixture(scope="module")
def alerts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("alerts")
    summary = write_alerts(small_config(), out, max_objects=5)
    assert summary["n_alerts"] > 20 and summary["version"] == latest_rubin_version()
    return out


def test_every_alert_decodes_and_normalises(alerts_dir: Path) -> None:
    rows = list(inspect_path(alerts_dir, Settings()))
    assert rows and all(row["status"] == "ok" for row in rows)
    assert {row["frameShape"][0] for row in rows} == {32}


def test_alerts_are_time_ordered_with_rubin_cutouts(alerts_dir: Path) -> None:
    records = _records(alerts_dir)
    mjd = [r["diaSource"]["midpointMjdTai"] for r in records]
    assert mjd == sorted(mjd)
    sizes, rotations = set(), set()
    for r in records[:40]:
        with fits.open(io.BytesIO(r["cutoutDifference"])) as hdus:
            header = hdus[0].header
            # Local linear WCS without CTYPE (astropy writes the CD matrix as PC x CDELT).
            assert header["BUNIT"] == "nJy" and "CTYPE1" not in header and "CRPIX1" in header
            assert hdus["UNCERT"].header["UTYPE"] == "VarianceUncertainty" and "PSFIMAGE" in hdus
            sizes.add(hdus[0].data.shape[0])
            rotations.add(round(header["ROTPA"], 3))
    assert len(rotations) == min(40, len(records)) and len(sizes) > 3
    assert min(sizes) >= 30 and max(sizes) <= 102


def test_truth_table_covers_the_alerts(alerts_dir: Path) -> None:
    with (alerts_dir / "truth.csv").open() as handle:
        truth = {int(row["diaObjectId"]): row for row in csv.DictReader(handle)}
    records = _records(alerts_dir)
    assert {r["diaSource"]["diaObjectId"] for r in records} <= set(truth)
    assert {row["class"] for row in truth.values()} <= set(CLASSES)
    assert sum(int(row["n_alerts"]) for row in truth.values()) == len(records)


def test_psf_flux_is_the_true_difference_flux_within_its_error(tmp_path: Path) -> None:
    """With a perfect subtraction (no PSF mismatch, misregistration, centring error) pulls are N(0, 1)."""
    sim = small_config()
    quiet = sim.render.model_copy(
        update={"mismatch_sigma": 0.0, "misregistration_arcsec": 0.0, "astrometric_jitter_arcsec": 0.0}
    )
    sim = sim.model_copy(update={"render": quiet, "alerts": sim.alerts.model_copy(update={"min_snr": 0.0})})
    write_alerts(sim, tmp_path, max_objects=4)
    survey = Survey(sim.survey, sim.seed)
    objects = {sim.alerts.first_object_id + e.index: make_object(sim, survey, e) for e in catalogue(sim)[:4]}
    pulls = []
    for r in _records(tmp_path):
        src = r["diaSource"]
        obj = objects[src["diaObjectId"]]
        epoch = (src["diaSourceId"] - sim.alerts.first_object_id - 10_000_000) % 1000
        assert obj.epochs.band[epoch] == src["band"]
        assert src["midpointMjdTai"] == pytest.approx(obj.epochs.mjd[epoch])
        pulls.append((src["psfFlux"] - obj.flux_diff[epoch]) / src["psfFluxErr"])
    assert len(pulls) > 100
    assert np.std(pulls) == pytest.approx(1.0, abs=0.15) and abs(np.mean(pulls)) < 0.15


def test_bundled_demo_archive() -> None:
    files = sorted(DEMO.glob("*.avro"))
    assert files and sum(p.stat().st_size for p in files) < 8_000_000
    assert (DEMO / "README.md").exists()
    with (DEMO / "truth.csv").open() as handle:
        truth = {int(row["diaObjectId"]): row["class"] for row in csv.DictReader(handle)}
    assert set(truth.values()) == set(CLASSES)
    rows = list(inspect_path(DEMO, Settings()))
    assert all(row["status"] == "ok" for row in rows)
    assert {row["diaObjectId"] for row in rows} == set(truth)
    assert min(sum(r["diaObjectId"] == i for r in rows) for i in truth) >= 12
