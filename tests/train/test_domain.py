"""Domain randomisation: ranges honoured, deterministic, physics untouched, frames valid for serving."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from broker_plugin.records import BANDS, Frame, StampFlag, check_frame
from broker_plugin.stamps import resample_to_frame
from broker_plugin_train.config import DomainConfig, RenderConfig, SimulationConfig, load_config
from broker_plugin_train.data.bandpasses import mag_to_njy
from broker_plugin_train.data.cadence import _WAVE, MIN_NIGHTS, Survey
from broker_plugin_train.data.domain import Look
from broker_plugin_train.data.population import SimObject, catalogue, make_object
from broker_plugin_train.data.render import look_cutouts, render_frames
from broker_plugin_train.data.shards import ShardDataset
from broker_plugin_train.data.simulate import pixel_rng, simulate

from .conftest import CONFIGS, point_source_object, small_config


def randomised(sim: SimulationConfig | None = None, **domain: Any) -> SimulationConfig:
    """The small config (or ``sim``) with the default config's domain randomisation, some of it replaced."""
    sim = sim or small_config()
    data = sim.model_dump()
    data["domain"] = load_config(CONFIGS / "default.toml").simulation.domain.model_dump() | domain
    return SimulationConfig.model_validate(data)


def counts(**n: int) -> SimulationConfig:
    """The small config with other class counts (unnamed classes: 0)."""
    names = (
        "agn",
        "snia_unconfirmed",
        "snia_confirmed",
        "variable",
        "snother_unconfirmed",
        "snother_confirmed",
    )
    return small_config(**({k: 0 for k in names} | n))


def objects(sim: SimulationConfig, n: int | None = None) -> list[SimObject]:
    survey = Survey(sim.survey, sim.seed)
    return [make_object(sim, survey, e) for e in catalogue(sim)[:n]]


def test_default_config_randomises_and_small_does_not(default_config) -> None:
    assert default_config.simulation.domain.enabled
    assert not small_config().domain.enabled  # the tests' physics checks keep the fixed look
    assert objects(small_config(), 1)[0].look is None


def test_draws_stay_within_their_ranges() -> None:
    sim = randomised(counts(agn=60, variable=60, snia_unconfirmed=60, snother_unconfirmed=60))
    dom = sim.domain
    objs = objects(sim)
    scales, seeing, subsets, gaps = [], [], [], []
    for o in objs:
        look, ep = o.look, o.epochs
        assert isinstance(look, Look)
        assert dom.seeing_median_arcsec[0] <= look.seeing_median_arcsec <= dom.seeing_median_arcsec[1]
        assert dom.native_pixel_scale_arcsec[0] <= look.pixel_scale_arcsec <= dom.native_pixel_scale_arcsec[1]
        assert dom.night_gap_mean_days[0] <= look.night_gap_mean_days <= dom.night_gap_mean_days[1]
        assert dom.host_offset_scale[0] <= look.host_offset_scale <= dom.host_offset_scale[1]
        lo, hi = dom.depth_offset_mag
        band = dom.depth_band_offset_mag
        assert all(lo - band <= v <= hi + band for v in look.depth_offset_mag.values())
        # Per visit: a rotation and a cutout side for every epoch, within their ranges.
        assert len(look.rotation_deg) == len(look.cutout_size) == len(ep)
        assert np.all((look.rotation_deg >= dom.rotation_deg[0]) & (look.rotation_deg <= dom.rotation_deg[1]))
        assert np.all((look.cutout_size >= dom.cutout_size[0]) & (look.cutout_size <= dom.cutout_size[1]))
        # The r-band seeing of every visit is clipped to the range (other bands scale as lambda^-0.2).
        r = ep.band == "r"
        assert np.all(
            (ep.fwhm[r] >= dom.seeing_range_arcsec[0] - 1e-9) & (ep.fwhm[r] <= dom.seeing_range_arcsec[1])
        )
        # Depth: the survey's m5 moved by the seeing term, the object's offset and a clipped visit scatter.
        m5_fixed = np.array([sim.survey.m5_median[b] for b in ep.band]) - 2.5 * np.log10(
            ep.fwhm
            / (sim.survey.seeing_median_arcsec * (np.array([_wave(b) for b in ep.band]) / _wave("r")) ** -0.2)
        )
        rest = ep.m5 - m5_fixed - np.array([look.depth_offset_mag[b] for b in ep.band])
        assert np.all(np.abs(rest) <= 2 * dom.depth_visit_sigma_mag + 4 * 0.1 + 1e-9)  # + transparency
        assert len(ep) >= MIN_NIGHTS
        if look.season_gap is not None and len(np.unique(np.floor(ep.mjd))) > MIN_NIGHTS:
            start = Survey(sim.survey, sim.seed).season_start(
                int((ep.mjd[0] - sim.survey.first_season_mjd) // 365)
            )
            day = ep.mjd - start
            g0, length = look.season_gap
            # No visit in the object's gap (visits fall up to 0.3 d after the night's mid-point).
            assert not np.any((day > g0 + 0.5) & (day < g0 + length - 0.5))
            gaps.append(length)
        scales.append(look.pixel_scale_arcsec)
        seeing.append(look.seeing_median_arcsec)
        subsets.append(len(look.bands) < len(sim.survey.bands))
    # The draws spread over the ranges (log-uniform: both ends are populated), not one survey's look.
    assert min(scales) < 0.25 and max(scales) > 0.8
    assert min(seeing) < 0.8 and max(seeing) > 1.8
    assert abs(np.mean(subsets) - dom.band_subset_probability) < 3 * math.sqrt(0.3 * 0.7 / len(objs))
    assert gaps and all(dom.season_gap_days[0] <= g <= dom.season_gap_days[1] for g in gaps)
    # Hosts: a fifth of the SNe hostless (2.5 sigma band of a binomial with n = 120).
    sne = [o for o in objs if o.true_class in ("SNIa", "SNOther")]
    hostless = np.mean([o.host is None for o in sne])
    assert abs(hostless - dom.hostless_fraction) < 2.5 * math.sqrt(0.2 * 0.8 / len(sne))


def _wave(band: str) -> float:
    return _WAVE[band]


def test_looks_are_deterministic_and_leave_the_physics_alone() -> None:
    sim = randomised(counts(snia_unconfirmed=6, agn=4, variable=4))
    one, two = objects(sim), objects(sim)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a.epochs.mjd, b.epochs.mjd)
        np.testing.assert_array_equal(a.epochs.m5, b.epochs.m5)
        np.testing.assert_array_equal(a.look.cutout_size, b.look.cutout_size)
        assert a.look.summary() == b.look.summary()
    # Another look (other ranges) of the same objects: the same physics (a generator of its own).
    other = objects(randomised(sim, seeing_median_arcsec=(1.5, 2.5), native_pixel_scale_arcsec=(0.5, 0.5)))
    for a, b in zip(one, other, strict=True):
        same = (a.true_class, a.subtype, a.ra, a.redshift, a.period, a.params)
        assert repr(same) == repr((b.true_class, b.subtype, b.ra, b.redshift, b.period, b.params))  # NaN too
        assert a.look.seeing_median_arcsec != b.look.seeing_median_arcsec
    # Another seed: other looks.
    reseeded = objects(sim.model_copy(update={"seed": sim.seed + 1}))
    assert [o.look.pixel_scale_arcsec for o in reseeded] != [o.look.pixel_scale_arcsec for o in one]


def test_missing_band_objects_miss_those_bands(tmp_path: Path) -> None:
    sim = randomised(counts(variable=10, agn=10, snia_unconfirmed=10), band_subset_probability=1.0)
    objs = objects(sim)
    seen = [set(o.epochs.band) for o in objs]
    for o, bands in zip(objs, seen, strict=True):
        assert bands <= set(o.look.bands) and len(o.look.bands) < len(sim.survey.bands)
        assert len(o.look.bands) >= sim.domain.min_bands
    assert any(b == {"g", "r"} for b in seen)  # ZTF-like objects
    assert any(b != {"g", "r"} for b in seen)  # and ones that lost other bands
    # In the written dataset too: no frame of a dropped band.
    tiny = randomised(counts(variable=3, agn=2), band_subset_probability=1.0)
    simulate(tiny, tmp_path / "sub", workers=1)
    data = ShardDataset(tmp_path / "sub")
    for seq in data:
        kept = set(seq.meta["look"]["bands"])
        assert {BANDS[b] for b in seq.band} <= kept < set(tiny.survey.bands)


def _frames(sim: SimulationConfig, n: int) -> list[tuple[SimObject, dict[str, np.ndarray]]]:
    return [(o, render_frames(o, sim.render, pixel_rng(sim.seed, o.entry.index))) for o in objects(sim, n)]


@pytest.mark.parametrize("scale", [1.0, 0.2])
def test_frames_of_any_native_grid_keep_the_serving_invariants(scale: float) -> None:
    """Coarse (ZTF-like) and fine (Rubin-like) native grids: frames that serving's checks accept."""
    sim = randomised(counts(snia_unconfirmed=2, agn=1, variable=1), native_pixel_scale_arcsec=(scale, scale))
    for o, out in _frames(sim, 4):
        side = sim.render.frame_size
        for i in np.flatnonzero(~o.epochs.missing):
            frame = Frame(
                out["frames"][i],
                out["masks"][i],
                StampFlag(0),
                str(o.epochs.band[i]),
                float(o.epochs.mjd[i]),
                i,
                science=out["science"][i],
                scienceMask=out["masks"][i],
                template=out["template"][i],
                templateMask=out["template_masks"][i],
                psfFlux=float(out["psf_flux"][i]),
                psfFluxErr=float(out["psf_flux_err"][i]),
            )
            check_frame(frame, side)
        assert out["frames"].dtype == np.float32 and np.isfinite(out["frames"]).all()
        for plane, mask in (("frames", "masks"), ("science", "masks"), ("template", "template_masks")):
            assert not out[plane][~out[mask]].any()  # masked pixels are 0
        assert not out["masks"][o.epochs.missing].any()


def test_small_cutouts_leave_the_frame_edges_masked() -> None:
    """A 30-px cutout at 0.2"/px (6") measures only the frame's middle; at 1"/px (30") all of it."""
    for scale, expect_full in ((0.2, False), (1.0, True)):
        sim = randomised(
            counts(variable=2),
            native_pixel_scale_arcsec=(scale, scale),
            cutout_size=(30, 30),
        )
        for o, out in _frames(sim, 2):
            ok = ~o.epochs.missing
            tmask = out["template_masks"][ok]  # the co-add has no artefacts: coverage alone
            if expect_full:
                assert tmask.all()
                continue
            # Measured: the rotated 6" x 6" square around the source, 12-21 frame pixels across.
            assert tmask[:, 14:18, 14:18].all()
            assert not tmask[:, :5, :].any() and not tmask[:, -5:, :].any()
            assert not tmask[:, :, :5].any() and not tmask[:, :, -5:].any()
            fraction = tmask.mean(axis=(1, 2))
            assert np.all((fraction > (4.0 / 12.8) ** 2) & (fraction < (8.5 / 12.8) ** 2))
            # Difference and science: never measured where the cutout does not reach.
            assert not (out["masks"][ok] & ~tmask).any()


def test_pixels_left_unrendered_never_reach_the_frame() -> None:
    """Rendering only the cutout pixels near the frame gives the frames of the whole cutout."""
    sim = randomised(counts(variable=1))
    for scale in (0.2, 0.45, 1.0):
        look = objects(sim, 1)[0].look
        look = Look(**{f: getattr(look, f) for f in Look.__slots__} | {"pixel_scale_arcsec": scale})
        for c in look_cutouts(look, sim.render, np.random.default_rng(0))[:20]:
            east, north = c.geometry.sky_offsets()
            image = np.exp(-(east**2 + north**2) / 50.0) + 0.01 * east  # smooth, non-zero everywhere
            partial = np.zeros_like(image)
            partial.flat[c.pixels] = image.flat[c.pixels]
            args = (c.geometry.cd_arcsec, c.geometry.source_xy, sim.render.frame_size, 0.4)
            full, full_mask = resample_to_frame(image, *args)
            part, part_mask = resample_to_frame(partial, *args)
            np.testing.assert_array_equal(full_mask, part_mask)
            np.testing.assert_array_equal(full, part)
            assert len(c.pixels) < c.geometry.size**2 or c.geometry.size * scale < 20.0


def test_bad_ranges_are_rejected() -> None:
    with pytest.raises(ValidationError):
        DomainConfig(native_pixel_scale_arcsec=(1.0, 0.2))
    with pytest.raises(ValidationError):
        DomainConfig(native_pixel_scale_arcsec=(0.0, 0.2))
    with pytest.raises(ValidationError):
        DomainConfig(night_gap_mean_days=(0.5, 3.0))
    with pytest.raises(ValidationError):
        DomainConfig(nights="weekly")
    with pytest.raises(ValidationError):
        randomised(min_bands=6)


def test_shifted_config_loads_and_simulates_a_tiny_dataset(tmp_path: Path, default_config) -> None:
    shifted = load_config(CONFIGS / "shifted.toml")
    sim = shifted.simulation
    assert shifted.data_dir == "data/sim/shifted" and sim.seed != default_config.simulation.seed
    assert sim.survey.cadence == "rubin" and sim.domain.enabled and sim.domain.nights == "survey"
    # The same class proportions as the default at ~1,500 objects.
    total, default_total = sim.population.counts.total, default_config.simulation.population.counts.total
    assert 1400 <= total <= 1600
    for name in ("agn", "snia_confirmed", "variable", "snother_unconfirmed"):
        ratio = getattr(sim.population.counts, name) / getattr(
            default_config.simulation.population.counts, name
        )
        assert ratio == pytest.approx(total / default_total, rel=0.05)
    # At or beyond the edges of the training ranges: pixel scale, cutout size, seeing.
    train_dom = default_config.simulation.domain
    assert sim.domain.native_pixel_scale_arcsec[1] <= train_dom.native_pixel_scale_arcsec[0]
    assert sim.domain.cutout_size[0] < train_dom.cutout_size[0]
    assert sim.domain.seeing_range_arcsec[0] < train_dom.seeing_range_arcsec[0]
    tiny = sim.model_copy(
        update={
            "population": sim.population.model_copy(
                update={
                    "counts": counts(
                        agn=1, variable=2, snia_unconfirmed=1, snother_unconfirmed=1
                    ).population.counts
                }
            )
        }
    )
    manifest = simulate(tiny, tmp_path / "shifted", workers=1)
    data = ShardDataset(tmp_path / "shifted")
    assert (
        len(data) == 5
        and json.loads((tmp_path / "shifted" / "manifest.json").read_text())["seed"] == sim.seed
    )
    assert manifest["config"]["survey"]["cadence"] == "rubin"
    for seq in data:
        assert seq.mjd.min() > sim.survey.first_season_mjd - 1
        assert seq.meta["look"]["pixel_scale_arcsec"] == pytest.approx(0.2)
        assert seq.meta["look"]["cutout_size_range"][1] <= 34
        assert np.isfinite(seq.frames).all() and not seq.frames[~seq.masks].any()
        # Small Rubin cutouts: the frame's corners are never measured.
        assert not seq.template_masks[:, 0, 0].any()


def test_randomised_difference_frames_do_not_depend_on_the_other_planes() -> None:
    """As in the fixed look: the same difference bytes with or without science and template frames."""
    sim = randomised(counts(snia_unconfirmed=1, agn=1))
    lean = sim.render.model_copy(update={"science_template": False})
    for o in objects(sim):
        both = render_frames(o, sim.render, pixel_rng(sim.seed, o.entry.index))
        alone = render_frames(o, lean, pixel_rng(sim.seed, o.entry.index))
        assert set(alone) == {"frames", "masks", "psf_flux", "psf_flux_err"}
        np.testing.assert_array_equal(alone["frames"], both["frames"])
        np.testing.assert_array_equal(alone["psf_flux"], both["psf_flux"])


@pytest.mark.parametrize("scale", [0.2, 1.0])
def test_a_point_source_keeps_its_flux_on_any_native_grid(scale: float) -> None:
    """Rubin-fine or ZTF-coarse native pixels, any rotation: the frames and psfFlux hold the source's flux.

    300 visits of a 60-sigma point source, cutouts covering the frame: the mean flux summed over the frame
    (the resampler conserves flux) and the mean psfFlux are the source's within 2 %.
    """
    n, fwhm, m5 = 300, 1.4, 22.4
    flux = float(mag_to_njy(m5 - 2.5))
    rng = np.random.default_rng(11)
    look = Look(fwhm, {}, ("r",), None, None, scale, 1.0, {}, rng.uniform(0, 360, n), np.full(n, 100))
    obj = replace(point_source_object(flux, n, fwhm, m5), look=look)
    config = RenderConfig(astrometric_jitter_arcsec=0.0, bad_column_rate=0.0, mask_blob_rate=0.0)
    out = render_frames(obj, config, np.random.default_rng(12))
    assert out["masks"].all() and out["template_masks"].all()  # covered at every rotation
    assert out["frames"].sum(axis=(1, 2)).mean() == pytest.approx(flux, rel=0.02)
    assert out["psf_flux"].mean() == pytest.approx(flux, rel=0.02)
    pulls = (out["psf_flux"] - flux) / out["psf_flux_err"]
    assert np.std(pulls) == pytest.approx(1.0, abs=0.15)


def _night_of(mjd: np.ndarray) -> np.ndarray:
    """Night number of each visit (time order): visits of one night lie well under half a day apart."""
    return np.concatenate([[0], np.cumsum(np.diff(mjd) > 0.5)])


def test_one_band_night_objects_are_visited_as_rubin_visits_a_field() -> None:
    population = counts(agn=20, variable=20, snia_unconfirmed=20)
    sim = randomised(population, one_band_night_probability=0.5, season_gap_probability=0)
    objs = objects(sim)
    one_band = [o for o in objs if o.look.one_band_nights]
    every_band = [o for o in objs if not o.look.one_band_nights]
    assert one_band and every_band  # both patterns in one survey (p = 0.5, 60 objects)
    for o in one_band:
        _, per_night = np.unique(_night_of(o.epochs.mjd), return_counts=True)
        assert per_night.max() <= 2  # one visit, sometimes a pair
        paired = np.nonzero(np.diff(o.epochs.mjd) < 1.0 / 24)[0]
        for i in paired:  # the pair: 15-45 min apart, in two bands next to each other
            assert 15 / 1440 - 1e-9 <= o.epochs.mjd[i + 1] - o.epochs.mjd[i] <= 45 / 1440 + 1e-9
            assert o.epochs.band[i] != o.epochs.band[i + 1]
        assert set(o.epochs.band) <= set(o.look.bands)
    for o in every_band:  # SDSS-like: every night takes every band of the object
        nights = _night_of(o.epochs.mjd)
        for night in np.unique(nights):
            assert set(o.epochs.band[nights == night]) == set(o.look.bands)
    # Off (the model default): no object is visited that way.
    off = objects(randomised(counts(agn=10), one_band_night_probability=0))
    assert not any(o.look.one_band_nights for o in off)
