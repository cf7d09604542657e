"""Science and template planes: on the difference's frame grid, and never a reason to reject an alert.

Real bytes only: the real ZTF alerts of ``tests/data/ztf``, the bundled demo archive (simulated Rubin
alerts with all three cutouts, as Rubin writes them), Rubin-format cutouts from the factories and the
hostile builders of ``tests/hostile.py`` and ``tests/stamps/hostile.py``.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from broker_plugin import exceptions as exc
from broker_plugin.config import LimitsSettings, StampSettings
from broker_plugin.records import MAX_PIXEL_FLUX_NJY, Alert, check_frame
from broker_plugin.serde.alerts import AlertDecoder, iter_payload
from broker_plugin.serde.files import iter_alert_payloads
from broker_plugin.serde.schemas import RubinSchemaStore
from broker_plugin.stamps import StampNormaliser, resample_to_frame
from broker_plugin.stamps import normalise as normalise_module
from broker_plugin.stamps.checks import flux_factor
from broker_plugin.stamps.fast_fits import linear_transform, parse_primary_image
from broker_plugin.stamps.normalise import NJY_AB_ZEROPOINT, ztf_source_pixel
from broker_plugin.stamps.resample import ResamplePlan
from tests.factories import ZTF_GOLDEN, rubin_cutout_bytes
from tests.hostile import fits_with_cards, rubin_cutout_with, tan_cutout
from tests.stamps.hostile import (
    drop_card,
    fits_bytes,
    gzip_bomb,
    gzip_fits,
    image_cards,
    linear_wcs,
    rubin_alert,
    rubin_cutout,
    set_card,
    ztf_fits,
)

DEMO = Path(__file__).resolve().parents[2] / "broker_plugin" / "demo_data"
SETTINGS = StampSettings()


@cache
def real_alerts(folder: Path) -> tuple[Alert, ...]:
    decoder = AlertDecoder(RubinSchemaStore())
    out = []
    for _, raw in iter_alert_payloads(folder):
        for alert in iter_payload(raw, decoder):
            assert isinstance(alert, Alert)
            out.append(alert)
    return tuple(out)


class Recorder:
    """A normaliser and the ``(plane, reason)`` its listeners heard."""

    def __init__(self, limits: LimitsSettings | None = None) -> None:
        self.normaliser = StampNormaliser(SETTINGS, limits)
        self.heard: list[tuple[str, str]] = []
        self.normaliser.watch_missing_planes(lambda plane, reason: self.heard.append((plane, reason)))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def _resampled(
    image: np.ndarray, cd: np.ndarray, source: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    return resample_to_frame(image, cd, source, SETTINGS.size, SETTINGS.pixel_scale_arcsec)


def _assert_plane(plane: np.ndarray | None, mask: np.ndarray | None, expected: tuple) -> None:
    assert plane is not None and mask is not None
    assert plane.tobytes() == expected[0].tobytes() and np.array_equal(mask, expected[1])


# --- planes on the frame grid ----------------------------------------------------------------------------


def test_demo_planes_are_each_cutout_through_the_resampler_with_its_own_wcs(recorder: Recorder) -> None:
    for alert in real_alerts(DEMO):
        frame = recorder.normaliser.normalise(alert)
        check_frame(frame, SETTINGS.size)
        for name in ("cutoutScience", "cutoutTemplate", "cutoutDifference"):
            raw = getattr(alert, name)
            parsed = parse_primary_image(raw)
            assert parsed is not None  # the fast reader reads Rubin's CCDData files
            image, cards = parsed
            cd, source = linear_transform(cards, alert.ra, alert.dec)  # type: ignore[misc]
            expected = _resampled(image, cd, source)
            plane = {"cutoutScience": "science", "cutoutTemplate": "template", "cutoutDifference": "data"}[
                name
            ]
            mask = frame.mask if plane == "data" else getattr(frame, f"{plane}Mask")
            _assert_plane(getattr(frame, plane), mask, expected)
        assert (frame.psfFlux, frame.psfFluxErr) == (alert.psfFlux, alert.psfFluxErr)
    assert recorder.heard == []


def test_demo_science_minus_template_is_the_difference_on_the_same_pixels(recorder: Recorder) -> None:
    """Flux: science - template summed over the pixels all three planes measure is the difference's sum.

    The simulator's difference is science - PSF-matched template, and PSF matching keeps flux, as does
    the resampler: so the two sums agree, and their sign is the alert's (a brightening transient has
    more flux in the science image than in the template at its position).
    """
    differences, statics = [], []
    for alert in real_alerts(DEMO):
        frame = recorder.normaliser.normalise(alert)
        both = frame.mask & frame.scienceMask & frame.templateMask  # type: ignore[operator]
        differences.append(float(frame.data[both].sum()))
        statics.append(float((frame.science - frame.template)[both].sum()))  # type: ignore[operator]
        assert np.sign(statics[-1]) == np.sign(differences[-1]) == np.sign(alert.psfFlux)
    ratios = np.array(statics) / np.array(differences)
    assert np.median(ratios) == pytest.approx(1.0, abs=0.01)
    assert np.corrcoef(differences, statics)[0, 1] > 0.999


def test_demo_science_minus_template_matches_the_difference_pixel_by_pixel(recorder: Recorder) -> None:
    """Alignment: science - template correlates with the difference best where the planes are not moved.

    Sums over the frame cannot see a shift (flux is kept either way); pixel by pixel, a plane one frame
    pixel off correlates worse. The PSF matching and noise make a few faint alerts exceptions.
    """
    correlations, aligned_best = [], []
    for alert in real_alerts(DEMO):
        frame = recorder.normaliser.normalise(alert)
        science, template = frame.science, frame.template
        inner = frame.mask & frame.scienceMask & frame.templateMask  # type: ignore[operator]
        inner[[0, -1], :] = inner[:, [0, -1]] = False  # np.roll wraps the edges around

        def correlation(
            moved: np.ndarray, inner: np.ndarray = inner, science: np.ndarray = science, data=frame.data
        ) -> float:
            return float(np.corrcoef((science - moved)[inner], data[inner])[0, 1])

        correlations.append(correlation(template))
        shifted = [correlation(np.roll(template, k, axis)) for axis in (0, 1) for k in (-1, 1)]
        aligned_best.append(correlations[-1] > max(shifted))
    assert np.median(correlations) > 0.9
    assert np.mean(aligned_best) > 0.75


def test_ztf_planes_share_the_difference_geometry(recorder: Recorder) -> None:
    scale = SETTINGS.ztf_pixel_scale_arcsec
    cd = np.array([[-scale, 0.0], [0.0, scale]])
    for alert in real_alerts(ZTF_GOLDEN):
        frame = recorder.normaliser.normalise(alert)
        assert alert.ztf is not None
        for name in ("cutoutScience", "cutoutTemplate"):
            parsed = parse_primary_image(gzip.decompress(getattr(alert, name)))
            assert parsed is not None
            image = parsed[0]
            source = ztf_source_pixel(image.shape, alert.ztf)
            if name == "cutoutScience":  # calibrated like the difference, never sign-flipped
                image = image * flux_factor(alert.ztf.magzpsci, NJY_AB_ZEROPOINT)
                expected = _resampled(image, cd, source)
                _assert_plane(frame.science, frame.scienceMask, expected)
            else:  # no zero point in the alert: DN
                _assert_plane(frame.template, frame.templateMask, _resampled(image, cd, source))
        # Same cutout footprint (edge truncation included) -> the same pixels measured.
        assert np.array_equal(frame.scienceMask, frame.mask) or not np.isfinite(image).all()  # type: ignore[arg-type]
        # ZTF science cutouts keep the sky: positive flux whatever isdiffpos says about the difference.
        assert np.median(frame.science[frame.scienceMask]) > 0  # type: ignore[index]
        assert (frame.psfFlux, frame.psfFluxErr) == (alert.psfFlux, alert.psfFluxErr)
    assert recorder.heard == []


def test_ztf_edge_truncated_alert_has_truncated_planes(recorder: Recorder) -> None:
    (alert,) = [a for a in real_alerts(ZTF_GOLDEN) if a.diaSourceId == 1786198313215015016]  # 63 x 45
    frame = recorder.normaliser.normalise(alert)
    assert frame.originalShape == (63, 45)
    assert np.array_equal(frame.scienceMask, frame.mask) and np.array_equal(frame.templateMask, frame.mask)  # type: ignore[arg-type]


def test_ztf_sign_flip_is_for_the_difference_only(recorder: Recorder) -> None:
    (alert,) = [a for a in real_alerts(ZTF_GOLDEN) if a.diaSourceId == 2866098621415010017]  # isdiffpos f
    assert alert.ztf is not None and not alert.ztf.isdiffpos
    flipped = recorder.normaliser.normalise(alert)
    as_positive = recorder.normaliser.normalise(
        dataclasses.replace(alert, ztf=dataclasses.replace(alert.ztf, isdiffpos=True))
    )
    assert np.array_equal(flipped.data, -as_positive.data)
    assert flipped.science.tobytes() == as_positive.science.tobytes()  # type: ignore[union-attr]
    assert flipped.template.tobytes() == as_positive.template.tobytes()  # type: ignore[union-attr]


def test_planes_on_the_difference_grid_share_its_plan_and_others_get_their_own(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[tuple[int, int]] = []
    build = ResamplePlan.build.__func__  # type: ignore[attr-defined]

    def counted(cls, shape, *args):  # type: ignore[no-untyped-def]
        built.append(tuple(shape))
        return build(cls, shape, *args)

    monkeypatch.setattr(ResamplePlan, "build", classmethod(counted))
    same = rubin_cutout_bytes(size=40, rotation_deg=30.0, flux=500.0)
    alert = dataclasses.replace(rubin_alert(rubin_cutout()), cutoutScience=same, cutoutTemplate=same)
    frame = recorder.normaliser.normalise(alert)
    assert built == [(40, 40)]  # one grid, one plan
    other = rubin_cutout_bytes(size=44, rotation_deg=75.0, flux=500.0)  # another grid: its own plan
    built.clear()
    moved = recorder.normaliser.normalise(dataclasses.replace(alert, cutoutTemplate=other))
    assert built == [(40, 40), (44, 44)]
    image, cards = parse_primary_image(other)  # type: ignore[misc]
    cd, source = linear_transform(cards, alert.ra, alert.dec)  # type: ignore[misc]
    _assert_plane(moved.template, moved.templateMask, _resampled(image, cd, source))
    assert moved.science.tobytes() == frame.science.tobytes()  # type: ignore[union-attr]
    assert recorder.heard == []


# --- a plane that cannot be made costs the plane, not the alert ------------------------------------------


def test_null_science_and_template_leave_the_planes_none(recorder: Recorder) -> None:
    alert = rubin_alert(rubin_cutout())  # the factories' Rubin alert: no science, no template
    frame = recorder.normaliser.normalise(alert)
    check_frame(frame, SETTINGS.size)
    assert frame.science is frame.scienceMask is frame.template is frame.templateMask is None
    assert (frame.psfFlux, frame.psfFluxErr) == (1000.0, 10.0)
    assert recorder.heard == [("science", "missing_cutout"), ("template", "missing_cutout")]


def test_demo_alert_without_science_or_template_keeps_its_difference(recorder: Recorder) -> None:
    alert = real_alerts(DEMO)[0]
    whole = recorder.normaliser.normalise(alert)
    for missing in ({"cutoutScience": None}, {"cutoutTemplate": b""}):
        frame = recorder.normaliser.normalise(dataclasses.replace(alert, **missing))
        assert frame.data.tobytes() == whole.data.tobytes() and frame.flags == whole.flags
        plane, kept = ("science", "template") if "cutoutScience" in missing else ("template", "science")
        assert getattr(frame, plane) is None and getattr(frame, f"{plane}Mask") is None
        assert getattr(frame, kept).tobytes() == getattr(whole, kept).tobytes()
    assert recorder.heard == [("science", "missing_cutout"), ("template", "missing_cutout")]


def _bad_rubin_cutouts() -> dict[str, bytes]:
    """Hostile Rubin cutouts (``tests/hostile.py``, ``tests/stamps/hostile.py``): refused as a difference."""
    cube = set_card(set_card(rubin_cutout(), "NAXIS", "3"), "NAXIS3", "2")
    return {
        "not-fits": b"these are not the bytes you are looking for",
        "truncated": rubin_cutout()[:4000],
        "naxis-negative": rubin_cutout_with(NAXIS="-40"),
        "bitpix-nan": rubin_cutout_with(BITPIX="NaN"),
        "crpix-string": rubin_cutout_with(CRPIX1="'twenty'"),
        "no-crpix": drop_card(rubin_cutout(), "CRPIX1"),
        "declares-16384sq": fits_with_cards(
            {"BITPIX": "-32", "NAXIS": "2", "NAXIS1": "16384", "NAXIS2": "16384"}
        ),
        "cube": cube,
        "singular-pc": tan_cutout((1.0, 1.0, 1.0, 1.0)),
        "cdelt-1e30": tan_cutout((1.0, 0.0, 0.0, 1.0), 1e30),
        "1e38-pixels": rubin_cutout_bytes(size=40, image=np.full((40, 40), 1e38)),
        "nan-only": rubin_cutout_bytes(size=40, image=np.full((40, 40), np.nan)),
        "over-max-bytes": rubin_cutout() + bytes(4_000_000),
        "far-from-source": fits_bytes(
            image_cards(**linear_wcs(crpix=5000.0)), np.ones((40, 40), ">f4").tobytes()
        ),
    }


@pytest.mark.parametrize("name", list(_bad_rubin_cutouts()))
@pytest.mark.parametrize("plane", ["science", "template"])
def test_a_bad_rubin_cutout_costs_its_plane_with_the_reason_it_would_get_as_a_difference(
    name: str, plane: str, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    raw = _bad_rubin_cutouts()[name]
    with pytest.raises(exc.StampError) as refused:
        recorder.normaliser.normalise(rubin_alert(raw))
    good = rubin_cutout()
    planes = {"cutoutScience": good, "cutoutTemplate": good} | {f"cutout{plane.title()}": raw}
    alert = dataclasses.replace(rubin_alert(good), **planes)
    with caplog.at_level(logging.DEBUG, logger=normalise_module.__name__):
        frame = recorder.normaliser.normalise(alert)
    check_frame(frame, SETTINGS.size)
    other = "template" if plane == "science" else "science"
    assert getattr(frame, plane) is None and getattr(frame, f"{plane}Mask") is None
    assert getattr(frame, other) is not None
    assert recorder.heard == [(plane, refused.value.reason)]
    assert f"no {plane} plane ({refused.value.reason})" in caplog.text


def _ztf_alert(science: bytes | None, template: bytes | None) -> Alert:
    alert = real_alerts(ZTF_GOLDEN)[-1]
    return dataclasses.replace(alert, cutoutScience=science, cutoutTemplate=template)


@pytest.mark.parametrize(
    ("science", "reason"),
    [
        (b"\x1f\x8b\x08\x00 not gzip at all", "corrupt_cutout"),
        (gzip_fits(b"SIMPLE  = garbage"), "corrupt_cutout"),
        (gzip_bomb(b"", 64 << 20), "cutout_too_large"),  # inflates to 64 MB; gunzip stops at 4 MB
        (gzip_fits(ztf_fits(np.full((63, 63), np.nan))), "empty_cutout"),
        (gzip_fits(ztf_fits(np.full((63, 63), 3e38))), "bad_cutout_values"),
        (gzip_fits(ztf_fits(np.ones((63, 2)))), "bad_cutout_shape"),
    ],
    ids=["not-gzip", "not-fits", "gzip-bomb", "nan-only", "3e38-dn", "63x2"],
)
def test_a_bad_ztf_science_or_template_costs_its_plane(
    science: bytes, reason: str, recorder: Recorder
) -> None:
    good = real_alerts(ZTF_GOLDEN)[-1]
    for alert, plane in ((_ztf_alert(science, good.cutoutTemplate), "science"),
                         (_ztf_alert(good.cutoutScience, science), "template")):  # fmt: skip
        recorder.heard.clear()
        frame = recorder.normaliser.normalise(alert)
        check_frame(frame, SETTINGS.size)
        assert getattr(frame, plane) is None
        assert recorder.heard == [(plane, reason)]


def test_a_plane_beyond_the_frame_bound_is_dropped_where_the_difference_would_be_refused(
    recorder: Recorder,
) -> None:
    # Each cutout pixel within the bound, but at 0.2"/px four of them make one 0.4" frame pixel.
    image = np.full((40, 40), 0.9 * MAX_PIXEL_FLUX_NJY)
    raw = fits_bytes(image_cards(40, 40, -64, **linear_wcs()), image.astype(">f8").tobytes())
    with pytest.raises(exc.InvalidFrameError):
        recorder.normaliser.normalise(rubin_alert(raw))
    assert recorder.heard == []  # a refused alert's planes are not counted
    frame = recorder.normaliser.normalise(dataclasses.replace(rubin_alert(rubin_cutout()), cutoutScience=raw))
    assert frame.science is None and recorder.heard[0] == ("science", "bad_cutout_values")


@pytest.mark.parametrize(("flux", "err"), [(2e12, 1.0), (1.0, 5e12), (-3e12, None)])
def test_photometry_beyond_the_frame_bound_is_dropped(
    flux: float, err: float | None, recorder: Recorder
) -> None:
    alert = dataclasses.replace(rubin_alert(rubin_cutout()), psfFlux=flux, psfFluxErr=err)
    frame = recorder.normaliser.normalise(alert)
    assert frame.psfFlux is None and frame.psfFluxErr is None
    assert ("photometry", "invalid_photometry") in recorder.heard


def test_a_bug_on_a_plane_is_logged_and_costs_the_plane(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    read = StampNormaliser._read

    def buggy(self: StampNormaliser, alert: Alert, plane: str, raw: bytes):  # type: ignore[no-untyped-def]
        if plane == "template":
            raise ZeroDivisionError("a template bug")
        return read(self, alert, plane, raw)

    monkeypatch.setattr(StampNormaliser, "_read", buggy)
    alert = real_alerts(DEMO)[0]
    frame = recorder.normaliser.normalise(alert)
    assert frame.template is None and frame.science is not None
    assert recorder.heard == [("template", "internal_error")]
    assert "a template bug" in caplog.text and "Traceback" in caplog.text


def test_the_difference_keeps_its_strict_rules(recorder: Recorder) -> None:
    alert = real_alerts(DEMO)[0]
    with pytest.raises(exc.MissingCutoutError):
        recorder.normaliser.normalise(dataclasses.replace(alert, cutoutDifference=None))
    with pytest.raises(exc.CorruptCutoutError):
        recorder.normaliser.normalise(dataclasses.replace(alert, cutoutDifference=b"garbage"))
    assert recorder.heard == []  # refused before the planes are read


def test_oversized_plane_of_a_directly_built_alert_is_refused_before_reading() -> None:
    # The decoder drops such a cutout already; an alert built otherwise meets the same bound here.
    recorder = Recorder(LimitsSettings(max_cutout_bytes=100_000))
    alert = dataclasses.replace(real_alerts(DEMO)[0], cutoutScience=rubin_cutout() + bytes(100_000))
    frame = recorder.normaliser.normalise(alert)
    assert frame.science is None and frame.template is not None
    assert recorder.heard == [("science", "cutout_too_large")]


# --- the service's counter -------------------------------------------------------------------------------


def test_missing_planes_feed_the_service_counter_by_plane_and_reason() -> None:
    from broker_plugin.metrics import PLANE_MISSING_REASONS, ServiceMetrics

    metrics = ServiceMetrics()
    text = metrics.exposition().decode()
    # Every series exists before the first event: both planes by every cutout reason, and photometry.
    for plane in ("science", "template"):
        for reason in (
            "missing_cutout",
            "corrupt_cutout",
            "cutout_too_large",
            "empty_cutout",
            "internal_error",
        ):
            assert (
                f'broker_plugin_cutout_planes_missing_total{{plane="{plane}",reason="{reason}"}} 0.0' in text
            )
    assert 'plane="photometry",reason="invalid_photometry"} 0.0' in text
    assert "invalid_frame" not in PLANE_MISSING_REASONS  # a plane never makes a frame invalid
    recorder = Recorder()
    recorder.normaliser.watch_missing_planes(metrics.count_missing_plane)
    alert = real_alerts(DEMO)[0]
    recorder.normaliser.normalise(dataclasses.replace(alert, cutoutScience=b"garbage", cutoutTemplate=None))
    recorder.normaliser.normalise(dataclasses.replace(alert, cutoutTemplate=None))
    metrics.count_missing_plane("template", "missing_cutout", 3)  # a preparation process's count of a poll
    text = metrics.exposition().decode()
    assert 'broker_plugin_cutout_planes_missing_total{plane="science",reason="corrupt_cutout"} 1.0' in text
    assert 'broker_plugin_cutout_planes_missing_total{plane="template",reason="missing_cutout"} 5.0' in text
