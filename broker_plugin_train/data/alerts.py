"""The simulated objects as Rubin alerts: Avro container files ordered by time, plus a truth table.

Each epoch whose forced PSF flux is significant (``|psfFlux / psfFluxErr| >= alerts.min_snr``, as
Rubin alerts on DIA sources above 5 sigma) becomes one alert of the latest bundled ``lsst.v*.alert``
schema (or ``alerts.schema_version``). Its three cutouts, ``cutoutDifference``, ``cutoutScience`` and
``cutoutTemplate`` (see :mod:`broker_plugin_train.data.render` for what each holds), are rendered the way
Rubin delivers them: one pixel grid for all three, 0.2"/px, the detector's orientation at that visit (a
fresh rotation every time), a side of 30..102 px following an exponential size distribution, each written
by :func:`broker_plugin.stamps.write_rubin_cutout` (CCDData FITS in nJy with variance, the PSF of that
image (the visit's, or the co-add's for the template) and the local linear CD WCS without CTYPE).
Schema versions before 6.1 have no ``cutoutScience``; it is left out there.

Each alert also carries its object's photometric history, as Rubin's do: ``prvDiaSources``, the
object's earlier alerts (their ``diaSource`` values), and ``prvDiaForcedSources``, the forced PSF
photometry of every earlier non-blank epoch from :data:`PRECOVERY_DAYS` before the object's first alert
on (Rubin's precovery of a new object) - detected or not, so a detection is in both lists with the same
numbers. Both lists keep the last :data:`HISTORY_DAYS` before the alert. The forced values are the very
``psfFlux``/``psfFluxErr`` the writer measures at each epoch to decide whether it alerts: the history
adds no random draw.

The alerts of all objects are merged in time and written one container file per night
(``alerts-<MJD night>.avro``, its Avro sync marker derived from the seed and night and the schema in its
header key-sorted: same config and seed, byte-identical files); ``truth.csv`` maps ``diaObjectId`` to its
class.

All alerts are held in memory before the time sort: meant for replay sets of up to a few thousand
objects (use ``--objects`` / ``--per-class``), not for the whole training set.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import fastavro
import numpy as np

from broker_plugin.records import BANDS
from broker_plugin.serde.rubin import rubin_alert_record
from broker_plugin.serde.schemas import latest_rubin_version, load_bundled_schema
from broker_plugin.stamps import RubinCutoutGeometry, write_rubin_cutout
from broker_plugin_train.config import CLASSES, SimulationConfig
from broker_plugin_train.data import scene
from broker_plugin_train.data.cadence import Survey
from broker_plugin_train.data.population import SimObject, catalogue, make_object
from broker_plugin_train.data.render import Conditions, add_artefacts, psf_photometry, render, share_artefacts

TRUTH_COLUMNS = (
    "diaObjectId",
    "class",
    "true_class",
    "subtype",
    "confirmed",
    "pool",
    "redshift",
    "period",
    "n_alerts",
)
#: Side of the PSF image stored with each cutout [pixels].
PSF_SIDE = 25
#: Rubin's forced photometry of a new object reaches back this far before its first detection [days].
PRECOVERY_DAYS = 30.0
#: An alert's history lists hold the epochs of this many days before it (Rubin: 12 months) [days].
HISTORY_DAYS = 365.0
#: ``diaSourceId`` / ``diaForcedSourceId`` of epoch ``i`` of object ``index``: ``first_object_id`` + these
#: offsets + ``index * 1000 + i`` (one id space per table, as in Rubin's database).
SOURCE_ID_OFFSET, FORCED_ID_OFFSET = 10_000_000, 20_000_000


def _psf_image(fwhm: float, wing: float, pixel_scale: float) -> np.ndarray:
    geom = RubinCutoutGeometry(PSF_SIDE, pixel_scale)
    east, north = (o.ravel()[None, :] for o in geom.sky_offsets())
    w, v = scene.psf_components(np.array([fwhm]), wing)
    zero = np.zeros((1, 1))
    comps = scene.convolve_profile(np.ones((1, 1)), (zero, zero), (zero,) * 3, v, w, pixel_scale**2 / 12.0)
    img = scene.evaluate(comps, east, north, pixel_scale**2).reshape(PSF_SIDE, PSF_SIDE)
    return img / img.sum()


def _cutout_fields(version: str) -> frozenset[str]:
    """The cutout fields of a Rubin schema version (``cutoutScience`` exists from 6.1 on)."""
    return frozenset(
        f["name"] for f in load_bundled_schema(version).parsed["fields"] if f["name"].startswith("cutout")
    )


def history_epochs(
    mjd: np.ndarray, measured: np.ndarray, alerted: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The epochs whose photometry the alert at epoch ``k`` carries.

    Parameters
    ----------
    mjd
        ``(n,)`` epoch mid-points [MJD], time-ordered.
    measured
        ``(n,)`` bool: the epoch has forced photometry (not blank).
    alerted
        ``(n,)`` bool: the epoch raised an alert (``alerted[k]`` is True).
    k
        The alert's epoch.

    Returns
    -------
    sources, forced
        Indices (ascending) of the ``prvDiaSources`` (earlier alerts) and the ``prvDiaForcedSources``
        (earlier measured epochs from :data:`PRECOVERY_DAYS` before the first alert on), both within
        :data:`HISTORY_DAYS` before epoch ``k``.
    """
    earlier = (np.arange(len(mjd)) < k) & (mjd >= mjd[k] - HISTORY_DAYS)
    first_alert = mjd[np.flatnonzero(alerted)[0]]
    sources = np.flatnonzero(earlier & alerted)
    forced = np.flatnonzero(earlier & measured & (mjd >= first_alert - PRECOVERY_DAYS))
    return sources, forced


def object_alerts(obj: SimObject, config: SimulationConfig, version: str) -> list[dict[str, Any]]:
    """Alert records of one object (its significant, non-blank epochs), with all three cutouts.

    Each record also carries the object's earlier photometry (``prvDiaSources``,
    ``prvDiaForcedSources``; see :func:`history_epochs`), taken from the same per-epoch measurements.
    """
    cfg, rcfg = config.alerts, config.render
    e = obj.entry
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, e.index, 2]))
    # The template noise has a generator of its own: the difference cutouts (and so which epochs alert)
    # are the same draws whether or not templates are rendered.
    template_rng = rng.spawn(1)[0]
    fields = _cutout_fields(version)
    n = len(obj.epochs)
    cond = Conditions.draw(rng, n, rcfg)
    object_id = cfg.first_object_id + e.index
    lo, hi = cfg.size_range
    scale = cfg.pixel_scale_arcsec
    mjd = np.asarray(obj.epochs.mjd, np.float64)
    # Every epoch's forced PSF photometry (NaN where blank) and whether it alerted, filled as the loop goes:
    # the history of epoch i needs only epochs before it.
    psf_flux, psf_flux_err = np.full(n, np.nan), np.full(n, np.nan)
    alerted = np.zeros(n, bool)
    sources: dict[int, dict[str, Any]] = {}
    records = []
    for i in range(n):
        size = int(min(hi, lo + rng.exponential(cfg.size_scale)))
        centre = (size - 1) / 2.0
        geom = RubinCutoutGeometry(
            size,
            scale,
            float(rng.uniform(0.0, 360.0)),
            (centre + rng.uniform(-0.5, 0.5), centre + rng.uniform(-0.5, 0.5)),
        )
        if obj.epochs.missing[i]:
            continue
        east, north = (o.ravel()[None, :] for o in geom.sky_offsets())
        sel = np.array([i])
        out = render(obj, sel, east, north, scale, cond, rcfg, rng, template_rng)
        flux, err = psf_photometry(out.difference, out.variance, out.psf)
        psf_flux[i], psf_flux_err[i] = flux[0], err[0]
        if abs(flux[0] / err[0]) < cfg.min_snr:
            continue
        alerted[i] = True
        sources[i] = {
            "diaSourceId": cfg.first_object_id + SOURCE_ID_OFFSET + e.index * 1000 + i,
            "diaObjectId": object_id,
            "midpointMjdTai": float(mjd[i]),
            "band": str(obj.epochs.band[i]),
            "ra": obj.ra,
            "dec": obj.dec,
            "psfFlux": float(flux[0]),
            "psfFluxErr": float(err[0]),
        }
        prv_sources, prv_forced = history_epochs(
            mjd, np.isfinite(psf_flux) & np.isfinite(psf_flux_err), alerted, i
        )
        shape = (size, size)
        diff, sci = out.difference.reshape(shape), out.science.reshape(shape)
        add_artefacts(diff, False, rcfg, rng)
        share_artefacts(diff, sci)
        variance = out.variance.reshape(shape)
        psf = _psf_image(float(obj.epochs.fwhm[i]), rcfg.psf_wing_weight, scale)
        cutouts = {
            "cutoutDifference": write_rubin_cutout(diff, variance, geom, obj.ra, obj.dec, psf=psf),
            "cutoutScience": write_rubin_cutout(sci, variance, geom, obj.ra, obj.dec, psf=psf),
            "cutoutTemplate": write_rubin_cutout(
                out.template.reshape(shape),
                out.template_variance.reshape(shape),
                geom,
                obj.ra,
                obj.dec,
                psf=_psf_image(float(out.template_fwhm[0]), rcfg.psf_wing_weight, scale),
            ),
        }
        records.append(
            rubin_alert_record(
                version,
                **sources[i],
                prvDiaSources=[sources[j] for j in prv_sources],
                prvDiaForcedSources=[
                    {
                        "diaForcedSourceId": cfg.first_object_id + FORCED_ID_OFFSET + e.index * 1000 + j,
                        "diaObjectId": object_id,
                        "midpointMjdTai": float(mjd[j]),
                        "band": str(obj.epochs.band[j]),
                        "ra": obj.ra,
                        "dec": obj.dec,
                        "psfFlux": float(psf_flux[j]),
                        "psfFluxErr": float(psf_flux_err[j]),
                    }
                    for j in prv_forced
                ],
                **{name: value for name, value in cutouts.items() if name in fields},
            )
        )
    return records


def _source_mjd(record: dict[str, Any]) -> float:
    """The alert's ``midpointMjdTai`` (``midPointTai`` before schema 5.0)."""
    source = record["diaSource"]
    return float(source["midpointMjdTai"] if "midpointMjdTai" in source else source["midPointTai"])


def write_alerts(
    config: SimulationConfig,
    out_dir: str | Path,
    max_objects: int | None = None,
    per_class: int | None = None,
    min_alerts: int = 0,
    max_alerts: int | None = None,
) -> dict[str, Any]:
    """Write the alerts and truth table of (some of) the simulated objects.

    Parameters
    ----------
    config
        Simulation settings (the same objects as ``simulate`` makes from this config and seed).
    out_dir
        Output folder: ``alerts-<night>.avro`` files and ``truth.csv``.
    max_objects, per_class
        Limit the objects (first ones of the catalogue, optionally this many per class).
    min_alerts
        Skip objects with fewer alerts (a replay set whose objects all have sequences).
    max_alerts
        Keep only each object's first alerts in time (a small archive).

    Returns
    -------
    dict
        ``n_objects``, ``n_alerts``, ``files`` and the schema ``version``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    version = config.alerts.schema_version or latest_rubin_version()
    survey = Survey(config.survey, config.seed)
    records, truth = [], []
    taken = dict.fromkeys(CLASSES, 0)
    for entry in catalogue(config):
        if max_objects is not None and len(truth) >= max_objects:
            break
        if per_class is not None and taken[entry.label] >= per_class:
            continue
        obj = make_object(config, survey, entry)
        alerts = object_alerts(obj, config, version)
        if len(alerts) < min_alerts:
            continue
        alerts = alerts[:max_alerts]
        taken[entry.label] += 1
        records += alerts
        truth.append(
            {
                "diaObjectId": config.alerts.first_object_id + entry.index,
                "class": entry.label,
                "true_class": obj.true_class,
                "subtype": obj.subtype,
                "confirmed": entry.confirmed,
                "pool": entry.pool,
                "redshift": obj.redshift,
                "period": obj.period,
                "n_alerts": len(alerts),
            }
        )
    records.sort(key=lambda r: (_source_mjd(r), r["diaSource"]["diaSourceId"]))
    nights: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        nights.setdefault(int(_source_mjd(r)), []).append(r)
    files = []
    # The header holds the schema as given, and fastavro's parse orders each field's keys by a set (so by
    # the process's hash seed): a key-sorted plain copy makes the header the same in every process.
    parsed = load_bundled_schema(version).parsed
    schema = json.loads(
        json.dumps({k: v for k, v in parsed.items() if not k.startswith("__")}, sort_keys=True)
    )
    for night, batch in sorted(nights.items()):
        path = out / f"alerts-{night}.avro"
        with path.open("wb") as handle:
            # As write_alert_container, but with a sync marker derived from the seed and night: fastavro
            # draws a random one, and same config + seed must give byte-identical files.
            marker = hashlib.sha256(f"{config.seed}/{night}".encode()).digest()[:16]
            fastavro.writer(handle, schema, batch, codec="deflate", sync_marker=marker)
        files.append(path.name)
    with (out / "truth.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=TRUTH_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in truth:
            writer.writerow(
                {k: ("" if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}
            )
    bands = {r["diaSource"].get("band", r["diaSource"].get("filterName")) for r in records}
    assert set(BANDS) >= bands  # noqa: S101 - internal invariant
    return {"n_objects": len(truth), "n_alerts": len(records), "files": files, "version": version}
