"""The light curves measured on the simulated pixels follow the physics that was drawn."""

from __future__ import annotations

import numpy as np
import pytest
import sncosmo
from astropy.timeseries import LombScargle
from scipy import stats

from broker_plugin.records import BANDS
from broker_plugin.stamps import RubinCutoutGeometry
from broker_plugin_train.data import sn_ia
from broker_plugin_train.data.bandpasses import bandpass
from broker_plugin_train.data.cadence import Survey
from broker_plugin_train.data.features import frame_photometry
from broker_plugin_train.data.population import catalogue, make_object
from broker_plugin_train.data.render import Conditions, psf_photometry, render, render_frames
from broker_plugin_train.data.simulate import pixel_rng

from .conftest import small_config, with_survey


def _salt3(obj) -> sncosmo.Model:
    """An independent SALT3 model with the object's drawn parameters."""
    model = sncosmo.Model(
        source=sncosmo.SALT3Source(modeldir=str(sn_ia.salt3_model_dir())),
        effects=[sncosmo.F99Dust()],
        effect_names=["mw"],
        effect_frames=["obs"],
    )
    p = obj.params
    model.set(z=obj.redshift, t0=p["t0"], x0=p["x0"], x1=p["x1"], c=p["c"], mwebv=p["mw_ebv"])
    return model


def _local_mag(t: np.ndarray, f: np.ndarray, at: float) -> float:
    """Magnitude at ``at`` from a quadratic fit to the fluxes within +-3 days (beats the noise down)."""
    near = np.abs(t - at) <= 3.0
    coef = np.polyfit(t[near] - at, f[near], 2)
    return float(31.4 - 2.5 * np.log10(coef[-1]))


def test_snia_pixels_follow_salt3() -> None:
    sim = small_config(
        agn=0, variable=0, snother_unconfirmed=0, snother_confirmed=0, snia_unconfirmed=0, snia_confirmed=16
    )
    sim = with_survey(
        sim, night_gap_days=(1, 1), weather_loss=0.0, object_loss=0.0, missing_frame=0.0, season_days=80.0
    )
    sim = sim.model_copy(update={"population": sim.population.model_copy(update={"zmax_confirmed": 0.12})})
    survey = Survey(sim.survey, sim.seed)
    geom = RubinCutoutGeometry(33, sim.render.native_pixel_scale_arcsec)
    # The survey's throughputs, registered here under names of the test's own.
    for b in sim.survey.bands:
        wave, trans = bandpass(sim.survey.filter_family, b)
        sncosmo.register(sncosmo.Bandpass(wave, trans, name=f"physics-test-{b}"), force=True)
    colour_err, width_err, widths, x1s, chi2 = [], [], [], [], []
    for entry in catalogue(sim):
        obj = make_object(sim, survey, entry)
        t_peak = float(obj.params["t0"])  # rest-frame B maximum, close to the observed g maximum
        t = obj.epochs.mjd
        if not (t.min() + 4 < t_peak < t.max() - 20):
            continue  # the peak and the 15 following days must be observed
        # Render the native difference images around maximum and measure them (forced PSF photometry).
        sel = np.nonzero(np.abs(t - t_peak - 7.5) < 13.0)[0]
        rng = pixel_rng(sim.seed, entry.index)
        east, north = (np.broadcast_to(o.ravel(), (len(sel), o.size)) for o in geom.sky_offsets())
        cond = Conditions.draw(rng, len(obj.epochs), sim.render)
        out = render(obj, sel, east, north, geom.pixel_scale_arcsec, cond, sim.render, rng)
        flux, err = psf_photometry(out.difference, out.variance, out.psf)
        t, band = t[sel], obj.epochs.band[sel]
        model = _salt3(obj)
        pred = model.bandflux(np.array([f"physics-test-{b}" for b in band]), t, zp=31.4, zpsys="ab")
        chi2.append(np.mean(((flux - pred) / err) ** 2))
        g, r = band == "g", band == "r"
        m_g, m_r = _local_mag(t[g], flux[g], t_peak), _local_mag(t[r], flux[r], t_peak)
        m_g15 = _local_mag(t[g], flux[g], t_peak + 15)
        true = model.bandmag(
            ["physics-test-g", "physics-test-r", "physics-test-g"], "ab", [t_peak, t_peak, t_peak + 15]
        )
        colour_err.append((m_g - m_r) - (true[0] - true[1]))
        width_err.append((m_g15 - m_g) - (true[2] - true[0]))
        widths.append(m_g15 - m_g)
        x1s.append(obj.params["x1"])
    assert len(widths) >= 6
    # Peak colour and decline over 15 days measured on the pixels match SALT3 for the drawn (x1, c, z).
    assert np.median(np.abs(colour_err)) < 0.05 and np.max(np.abs(colour_err)) < 0.15
    assert np.median(np.abs(width_err)) < 0.08 and np.max(np.abs(width_err)) < 0.25
    # Brighter-slower: larger stretch x1 declines more slowly.
    assert stats.spearmanr(x1s, widths).statistic < -0.4
    # The light curve agrees with SALT3 within the reported errors.
    assert 0.6 < np.median(chi2) < 1.6


def test_periodic_variables_recover_their_period_from_the_frames() -> None:
    sim = small_config(
        agn=0, snia_unconfirmed=0, snia_confirmed=0, snother_unconfirmed=0, snother_confirmed=0, variable=40
    )
    # A Rubin-like cadence (visits at varying times of night) breaks the 1-day alias of drift scans.
    sim = with_survey(sim, cadence="rubin", rubin_visit_fraction=1.0, season_days=150.0, weather_loss=0.2)
    survey = Survey(sim.survey, sim.seed)
    hits, tried = 0, 0
    for entry in catalogue(sim):
        obj = make_object(sim, survey, entry)
        if obj.subtype == "LPV":
            continue  # periods of 100-500 d: longer than a season
        out = render_frames(obj, sim.render, pixel_rng(sim.seed, entry.index))
        flux, err = frame_photometry(out["frames"], out["masks"])
        band = np.array([BANDS.index(b) for b in obj.epochs.band])
        ok = np.isfinite(flux)
        if np.nanmax(np.abs(flux / err)) < 20:
            continue  # too faint to see the variation
        scaled = np.full(len(flux), np.nan)
        for b in np.unique(band[ok]):
            s = ok & (band == b)
            scaled[s] = (flux[s] - np.median(flux[s])) / np.std(flux[s])
        good = np.isfinite(scaled)
        freq = np.linspace(1 / 60.0, 5.0, 60000)
        best = 1 / freq[np.argmax(LombScargle(obj.epochs.mjd[good], scaled[good]).power(freq))]
        truths = [obj.period] + ([obj.period / 2] if obj.subtype == "EB" else [])
        tried += 1
        hits += any(abs(best - p) / p < 0.01 for p in truths)
    assert tried >= 10
    assert hits / tried >= 0.8


@pytest.mark.parametrize("band", ["u", "g", "r", "i", "z"])
def test_agn_bluer_bands_vary_more(band: str) -> None:
    sim = small_config(
        agn=30, variable=0, snia_unconfirmed=0, snia_confirmed=0, snother_unconfirmed=0, snother_confirmed=0
    )
    survey = Survey(sim.survey, sim.seed)
    ratios = []
    for entry in catalogue(sim):
        obj = make_object(sim, survey, entry)
        mag = -2.5 * np.log10(obj.flux_total)
        sd = {b: np.std(mag[obj.epochs.band == b]) for b in ("r", band)}
        ratios.append(sd[band] / sd["r"])
    expected = {"u": 1.28, "g": 1.14, "r": 1.0, "i": 0.91, "z": 0.84}[band]  # (lambda / lambda_r)^-0.48
    assert np.median(ratios) == pytest.approx(expected, rel=0.1)


def test_the_filter_family_follows_the_cadence_unless_chosen() -> None:
    sim = small_config()
    assert sim.survey.cadence == "stripe82" and sim.survey.filter_family == "sdss2010"
    assert with_survey(sim, cadence="rubin").survey.filter_family == "lsst2023"
    assert with_survey(sim, filters="lsst2023").survey.filter_family == "lsst2023"
    with pytest.raises(ValueError, match="filters"):
        with_survey(sim, filters="johnson")


def test_supernovae_are_observed_through_the_chosen_filters_and_nothing_else_changes() -> None:
    sim = small_config(agn=2, variable=2, snia_unconfirmed=3, snia_confirmed=3, snother_unconfirmed=3)
    lsst = with_survey(sim, filters="lsst2023")
    objects = {}
    for name, config in (("sdss", sim), ("lsst", lsst)):
        survey = Survey(config.survey, config.seed)
        objects[name] = [make_object(config, survey, e) for e in catalogue(config)]
    classes = set()
    for a, b in zip(objects["sdss"], objects["lsst"], strict=True):
        classes.add(a.true_class)
        np.testing.assert_array_equal(a.epochs.mjd, b.epochs.mjd)  # the cadence stays the cadence's
        if a.true_class not in ("SNIa", "SNOther"):
            np.testing.assert_array_equal(a.flux_total, b.flux_total)
            continue
        assert a.redshift == b.redshift and not np.allclose(a.flux_total, b.flux_total, rtol=1e-3)
        if a.true_class == "SNIa":  # the same SN through LSST's throughputs, computed on its own
            p = b.params
            params = sn_ia.SNIaParams(
                b.redshift, p["t0"], p["x0"], p["x1"], p["c"], p["mw_ebv"], p["peak_abs_mag_b"]
            )
            expected = sn_ia.flux_njy(params, b.epochs.mjd, b.epochs.band, "lsst2023")
            np.testing.assert_allclose(b.flux_total, expected, rtol=1e-12)
    assert {"SNIa", "SNOther", "AGN", "Variable"} <= classes
