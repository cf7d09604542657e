"""The alert writer's files decode with the service's own decoder, and the bundled demo archive."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import subprocess
import sys
from pathlib import Path

import fastavro
import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData

from broker_plugin.commands.inspect import inspect_path
from broker_plugin.config import Settings
from broker_plugin.factory import build_decoder
from broker_plugin.serde.alerts import iter_container
from broker_plugin.serde.rubin import encode_rubin_message
from broker_plugin.serde.schemas import latest_rubin_version
from broker_plugin.stamps import RubinCutoutGeometry, StampNormaliser
from broker_plugin_train.config import CLASSES, SimulationConfig
from broker_plugin_train.data import scene
from broker_plugin_train.data.alerts import FORCED_ID_OFFSET, history_epochs, write_alerts
from broker_plugin_train.data.cadence import Survey
from broker_plugin_train.data.population import SimObject, catalogue, make_object
from broker_plugin_train.data.render import psf_photometry, template_conditions

from .conftest import small_config
from .psf_matching import match, matching_kernel

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


def _objects(sim: SimulationConfig, n: int) -> dict[int, SimObject]:
    survey = Survey(sim.survey, sim.seed)
    return {sim.alerts.first_object_id + e.index: make_object(sim, survey, e) for e in catalogue(sim)[:n]}


def _epoch(sim: SimulationConfig, source: dict) -> int:
    return (source["diaSourceId"] - sim.alerts.first_object_id - 10_000_000) % 1000


def _read(cutout: bytes) -> tuple[np.ndarray, np.ndarray, fits.Header]:
    """Image and variance [nJy, nJy^2] and header of a Rubin cutout, read back with astropy."""
    with fits.open(io.BytesIO(cutout)) as hdus:
        header = hdus[0].header
    ccd = CCDData.read(io.BytesIO(cutout), format="fits")
    assert ccd.unit == "nJy" and ccd.uncertainty.uncertainty_type == "var"
    return np.asarray(ccd.data, np.float64), np.asarray(ccd.uncertainty.array, np.float64), header


def _psf(fwhm: float, wing: float, header: fits.Header, side: int) -> np.ndarray:
    """Unit-flux PSF at the cutout's source pixel (CRPIX), on the cutout's grid."""
    source = (header["CRPIX1"] - 1.0, header["CRPIX2"] - 1.0)
    east, north = (
        o.ravel()[None, :] for o in RubinCutoutGeometry(side, 0.2, header["ROTPA"], source).sky_offsets()
    )
    w, v = scene.psf_components(np.array([fwhm]), wing)
    zero = np.zeros((1, 1))
    comps = scene.convolve_profile(np.ones((1, 1)), (zero, zero), (zero,) * 3, v, w, 0.2**2 / 12)
    return scene.evaluate(comps, east, north, 0.2**2)


@pytest.fixture(scope="module")
def quiet_alerts(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimulationConfig, Path]:
    """Alerts of every epoch (min_snr 0) with a perfect subtraction: no mismatch, misregistration, jitter."""
    sim = small_config()
    quiet = sim.render.model_copy(
        update={"mismatch_sigma": 0.0, "misregistration_arcsec": 0.0, "astrometric_jitter_arcsec": 0.0}
    )
    sim = sim.model_copy(update={"render": quiet, "alerts": sim.alerts.model_copy(update={"min_snr": 0.0})})
    out = tmp_path_factory.mktemp("quiet")
    write_alerts(sim, out, max_objects=4)
    return sim, out


def test_psf_flux_is_the_true_difference_flux_within_its_error(
    quiet_alerts: tuple[SimulationConfig, Path],
) -> None:
    """With a perfect subtraction (no PSF mismatch, misregistration, centring error) pulls are N(0, 1)."""
    sim, folder = quiet_alerts
    objects = _objects(sim, 4)
    pulls = []
    for r in _records(folder):
        src = r["diaSource"]
        obj = objects[src["diaObjectId"]]
        epoch = _epoch(sim, src)
        assert obj.epochs.band[epoch] == src["band"]
        assert src["midpointMjdTai"] == pytest.approx(obj.epochs.mjd[epoch])
        pulls.append((src["psfFlux"] - obj.flux_diff[epoch]) / src["psfFluxErr"])
    assert len(pulls) > 100
    assert np.std(pulls) == pytest.approx(1.0, abs=0.15) and abs(np.mean(pulls)) < 0.15


def test_science_minus_matched_template_has_the_alert_flux(
    quiet_alerts: tuple[SimulationConfig, Path],
) -> None:
    """Read back from the FITS: PSF flux of science - template * K = psfFlux, template PSF flux = f_ref.

    With a perfect subtraction the only difference is the matched template's noise, a fraction of
    psfFluxErr; epochs whose seeing beats the co-add's cannot be matched (K would deconvolve) and are
    skipped.
    """
    sim, folder = quiet_alerts
    objects = _objects(sim, 4)
    wing = sim.render.psf_wing_weight
    diff_pulls, ref_pulls = [], []
    for r in _records(folder):
        src = r["diaSource"]
        obj, epoch = objects[src["diaObjectId"]], _epoch(sim, src)
        science, variance, header = _read(r["cutoutScience"])
        template, t_variance, _ = _read(r["cutoutTemplate"])
        fwhm, t_fwhm = (
            obj.epochs.fwhm[epoch],
            template_conditions(obj, np.array([epoch]), 0.2, sim.render)[0][0],
        )
        good = np.isfinite(science).ravel()
        side = science.shape[0]
        t_flux, t_err = psf_photometry(
            template.reshape(1, -1), t_variance.reshape(1, -1), _psf(t_fwhm, wing, header, side)
        )
        if obj.host is None:  # else the PSF fit picks up the host's light under the source
            ref_pulls.append((t_flux[0] - obj.flux_ref[epoch]) / t_err[0])
        if fwhm <= t_fwhm:
            continue
        matched = match(template, matching_kernel(fwhm, t_fwhm, wing, 0.2))
        image = np.where(good, (science - matched).ravel(), np.nan)[None, :]
        flux, _ = psf_photometry(image, variance.reshape(1, -1), _psf(fwhm, wing, header, side))
        diff_pulls.append((flux[0] - src["psfFlux"]) / src["psfFluxErr"])
    assert len(diff_pulls) > 100
    # What is left is the matched template's noise: in PSF flux about 1/sqrt(N) = 0.22 of psfFluxErr.
    expected = 1 / np.sqrt(sim.render.template_visits)
    assert np.std(diff_pulls) == pytest.approx(expected, rel=0.3) and abs(np.mean(diff_pulls)) < 0.05
    assert np.max(np.abs(diff_pulls)) < 5 * expected
    # The template holds the source at its reference flux (stars, AGN) or nothing (SNe), within its error.
    assert len(ref_pulls) > 100
    assert abs(np.mean(ref_pulls)) < 0.2 and np.std(ref_pulls) == pytest.approx(1.0, abs=0.2)


def test_alerts_carry_science_and_template_on_the_difference_grid(alerts_dir: Path) -> None:
    """Decoded like a Kafka message; three cutouts on one grid; the template a quieter co-add; consistent."""
    sim = small_config()
    objects = _objects(sim, 5)
    settings = Settings(_env_file=None)
    decoder, normaliser = build_decoder(settings), StampNormaliser(settings.stamps)
    version = latest_rubin_version()
    wing, stds, noise_ratios = sim.render.psf_wing_weight, [], []
    for r in _records(alerts_dir):
        (alert,) = decoder.decode_message(encode_rubin_message(r, version))
        assert alert.cutoutDifference == r["cutoutDifference"]
        difference, variance, header = _read(r["cutoutDifference"])
        science, s_variance, s_header = _read(r["cutoutScience"])
        template, t_variance, t_header = _read(r["cutoutTemplate"])
        for other in (s_header, t_header):
            for card in (
                "NAXIS1",
                "NAXIS2",
                "CRPIX1",
                "CRPIX2",
                "CRVAL1",
                "CRVAL2",
                "ROTPA",
                "PC1_1",
                "PC1_2",
            ):
                assert other[card] == header[card]
        # The visit's artefacts in science and difference alike; the co-add has none.
        np.testing.assert_array_equal(np.isnan(science), np.isnan(difference))
        assert np.isfinite(template).all()
        np.testing.assert_array_equal(s_variance, variance)
        noise_ratios.append(np.median(t_variance) / np.median(variance))
        # The plugin's normaliser makes valid frames of all three (what serving will do with them).
        frames = [
            normaliser.normalise(dataclasses.replace(alert, cutoutDifference=c))
            for c in (r["cutoutDifference"], r["cutoutScience"], r["cutoutTemplate"])
        ]
        np.testing.assert_array_equal(frames[1].mask, frames[0].mask)
        # Away from the subtraction residuals, science - template * K = difference within noise.
        obj, epoch = objects[r["diaSource"]["diaObjectId"]], _epoch(sim, r["diaSource"])
        fwhm, t_fwhm = (
            obj.epochs.fwhm[epoch],
            template_conditions(obj, np.array([epoch]), 0.2, sim.render)[0][0],
        )
        if fwhm <= t_fwhm:
            continue
        matched = match(template, matching_kernel(fwhm, t_fwhm, wing, 0.2))
        sigma = np.sqrt(variance)
        inner = np.zeros(science.shape, bool)
        inner[10:-10, 10:-10] = True  # out of reach of the kernel's edge effects
        # Where the static light is below 0.1 sigma its PSF-mismatch residual is well below the noise.
        far = inner & np.isfinite(science) & (np.abs(matched) < 0.1 * sigma)
        if far.sum() >= 50:
            stds.append(np.std(((science - matched - difference) / sigma)[far]))
    assert len(stds) > 30
    assert np.median(stds) < 0.06 and max(stds) < 0.12
    # Template noise: 1/template_visits of a visit's variance (band medians; a star adds Poisson / N).
    assert np.median(noise_ratios) == pytest.approx(1 / sim.render.template_visits, rel=0.3)


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


# --- the photometric history each alert carries -----------------------------------------------------


def _full_records(folder: Path) -> list[dict]:
    """All records of a folder read whole by fastavro (the service's reader skips the history)."""
    out = []
    for path in sorted(folder.glob("*.avro")):
        with path.open("rb") as handle:
            out += list(fastavro.reader(handle))
    return out


def test_history_epochs_windows() -> None:
    """Earlier epochs only: the alerts; the measured epochs from 30 d before the first alert."""
    mjd = np.array([0.0, 10.0, 39.0, 40.0, 50.0, 60.0, 70.0, 300.0, 404.0, 405.0, 420.0])
    measured = np.ones(len(mjd), bool)
    measured[5] = False  # a blank epoch has no forced photometry
    alerted = np.zeros(len(mjd), bool)
    alerted[[4, 6, 7, 10]] = True  # first alert at day 50: precovery from day 20 on
    sources, forced = history_epochs(mjd, measured, alerted, 4)
    assert sources.tolist() == [] and forced.tolist() == [2, 3]
    sources, forced = history_epochs(mjd, measured, alerted, 7)
    assert sources.tolist() == [4, 6] and forced.tolist() == [2, 3, 4, 6]
    # Day 420: the 12 months reach back to day 55 (days 39-50 drop out of both lists).
    sources, forced = history_epochs(mjd, measured, alerted, 10)
    assert sources.tolist() == [6, 7] and forced.tolist() == [6, 7, 8, 9]
    # Exactly 30 days before the first alert and exactly 365 days before the alert are in.
    mjd[2], mjd[10] = 20.0, 70.0 + 365.0
    assert history_epochs(mjd, measured, alerted, 4)[1].tolist() == [2, 3]
    assert history_epochs(mjd, measured, alerted, 10)[0].tolist() == [6, 7]


def _history_check(sim: SimulationConfig, records: list[dict], old_names: bool = False) -> int:
    """Check every alert's history against its object's epochs; return the number of forced points."""
    mjd_key, band_key, flux_key, err_key = (
        ("midPointTai", "filterName", "psFlux", "psFluxErr")
        if old_names
        else ("midpointMjdTai", "band", "psfFlux", "psfFluxErr")
    )
    by_object: dict[int, dict[int, dict]] = {}
    for r in records:
        by_object.setdefault(r["diaSource"]["diaObjectId"], {})[_epoch(sim, r["diaSource"])] = r
    objects = _objects(sim, max(by_object) - sim.alerts.first_object_id + 1)
    n_forced = 0
    for object_id, alerts in by_object.items():
        obj = objects[object_id]
        alerted = np.zeros(len(obj.epochs), bool)
        alerted[list(alerts)] = True
        forced_seen: dict[int, tuple[float, float]] = {}
        for k, r in alerts.items():
            sources, forced = history_epochs(obj.epochs.mjd, ~obj.epochs.missing, alerted, k)
            assert [s["diaSourceId"] for s in r["prvDiaSources"]] == [
                alerts[j]["diaSource"]["diaSourceId"] for j in sources
            ]
            # An earlier alert's detection is carried as that alert wrote it, field for field.
            assert r["prvDiaSources"] == [alerts[j]["diaSource"] for j in sources]
            got = r["prvDiaForcedSources"]
            epochs = [
                f["diaForcedSourceId"]
                - sim.alerts.first_object_id
                - FORCED_ID_OFFSET
                - (object_id - sim.alerts.first_object_id) * 1000
                for f in got
            ]
            assert epochs == forced.tolist()
            for j, f in zip(epochs, got, strict=True):
                assert f["diaObjectId"] == object_id and f[band_key] == obj.epochs.band[j]
                assert f[mjd_key] == obj.epochs.mjd[j]
                values = (f[flux_key], f[err_key])
                # One measurement per epoch: the same numbers in every alert that carries it ...
                assert forced_seen.setdefault(j, values) == values
                if j in alerts:  # ... and a detection's are its alert's psfFlux / psfFluxErr,
                    source = alerts[j]["diaSource"]
                    assert values == (source[flux_key], source[err_key])
                else:  # while an epoch that did not alert was below the alert threshold.
                    assert abs(values[0] / values[1]) < sim.alerts.min_snr
            n_forced += len(got)
    return n_forced


def test_alerts_carry_their_objects_history(alerts_dir: Path) -> None:
    records = _full_records(alerts_dir)
    n_forced = _history_check(small_config(), records)
    assert n_forced > 100
    # Some alerts carry precovery: forced photometry of epochs before the object's first alert.
    first = {}
    for r in records:
        first.setdefault(r["diaSource"]["diaObjectId"], r["diaSource"]["midpointMjdTai"])
    assert any(
        f["midpointMjdTai"] < first[r["diaSource"]["diaObjectId"]]
        for r in records
        for f in r["prvDiaForcedSources"]
    )


def test_history_in_the_oldest_schema(tmp_path: Path) -> None:
    """Schema 3.0 (the oldest bundled): the history under its names, readable by the service's decoder."""
    sim = small_config()
    sim = sim.model_copy(update={"alerts": sim.alerts.model_copy(update={"schema_version": "3.0"})})
    summary = write_alerts(sim, tmp_path, max_objects=2)
    assert summary["version"] == "3.0" and summary["n_alerts"] > 5
    records = _full_records(tmp_path)
    assert _history_check(sim, records, old_names=True) > 10
    assert all(row["status"] == "ok" for row in inspect_path(tmp_path, Settings()))


def test_alert_files_are_deterministic(tmp_path: Path) -> None:
    """Same config and seed, byte-identical files, also from processes with other hash seeds.

    Hash seeds 1 and 2 iterate a set of the keys of an Avro field in different orders (what fastavro's
    schema parse once leaked into the container header).
    """
    sim = small_config()
    write_alerts(sim, tmp_path / "a", max_objects=2)
    script = (
        "import sys; from tests.train.conftest import small_config; "
        "from broker_plugin_train.data.alerts import write_alerts; "
        "write_alerts(small_config(), sys.argv[1], max_objects=2)"
    )
    root = Path(__file__).resolve().parents[2]
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(root)}
        subprocess.run([sys.executable, "-c", script, str(tmp_path / seed)], check=True, cwd=root, env=env)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(names) > 2
    for other in ("1", "2"):
        assert names == sorted(p.name for p in (tmp_path / other).iterdir())
        for name in names:
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / other / name).read_bytes(), name
