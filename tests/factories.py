"""Factories for test data: Rubin alerts with realistic cutouts, point-source images."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from broker_plugin.pipeline import Inbound
from broker_plugin.serde.alerts import AlertDecoder
from broker_plugin.serde.rubin import encode_rubin_message, rubin_alert_record
from broker_plugin.stamps import RubinCutoutGeometry, write_rubin_cutout

ZTF_GOLDEN = Path(__file__).parent / "data" / "ztf"


def shared_ztf_dir() -> Path | None:
    """The 145 real ZTF alerts shared beside the repository, if this machine has them."""
    candidates = [
        os.environ.get("BROKER_PLUGIN_TEST_ZTF_DIR", ""),
        Path(__file__).resolve().parents[2] / "shared" / "data" / "ztf",
        "/work/shared/data/ztf",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def gaussian_source(
    geometry: RubinCutoutGeometry, flux: float, fwhm_arcsec: float, east: float = 0.0, north: float = 0.0
) -> np.ndarray:
    """Image [flux per pixel] of a Gaussian point source at (east, north) arcsec from the source pixel."""
    e, n = geometry.sky_offsets()
    sigma = fwhm_arcsec / (2 * math.sqrt(2 * math.log(2)))
    pixel_area = geometry.pixel_scale_arcsec**2
    return (
        flux
        * pixel_area
        * np.exp(-((e - east) ** 2 + (n - north) ** 2) / (2 * sigma**2))
        / (2 * math.pi * sigma**2)
    )


def rubin_cutout_bytes(
    size: int = 51,
    rotation_deg: float = 0.0,
    flux: float = 1000.0,
    east: float = 0.0,
    north: float = 0.0,
    image: np.ndarray | None = None,
) -> bytes:
    """FITS bytes of a Rubin cutout holding one point source (or the given image)."""
    geometry = RubinCutoutGeometry(size=size, rotation_deg=rotation_deg)
    if image is None:
        image = gaussian_source(geometry, flux, 0.8, east, north)
    return write_rubin_cutout(image, np.ones((size, size)), geometry, 150.0, 2.0)


def rubin_record(
    version: str = "11.1",
    *,
    diaSourceId: int = 1,
    diaObjectId: int | None = 2,
    midpointMjdTai: float = 60_000.0,
    band: str = "g",
    cutout: bytes | None = b"x",
    psfFlux: float | None = 1.0,
) -> dict:
    """A complete alert record of Rubin schema ``version`` (ra 1.0, dec 2.0)."""
    return rubin_alert_record(
        version, diaSourceId=diaSourceId, diaObjectId=diaObjectId, midpointMjdTai=midpointMjdTai, band=band,
        ra=1.0, dec=2.0, psfFlux=psfFlux, psfFluxErr=None if psfFlux is None else 0.1,
        cutoutDifference=cutout,
    )  # fmt: skip


def rubin_message(
    version: str = "11.1",
    diaSourceId: int = 101,
    diaObjectId: int = 7,
    cutout: bytes | None = b"",
    band: str = "r",
    midpointMjdTai: float = 60_500.25,
    psfFlux: float = 1000.0,
    prvDiaSources: list[dict] | None = None,
    prvDiaForcedSources: list[dict] | None = None,
) -> bytes:
    """A Confluent-framed Rubin alert of schema ``version``; ``cutout=b""`` means a default point source.

    ``prvDiaSources`` / ``prvDiaForcedSources``: the history it carries (dicts of
    :func:`~broker_plugin.serde.rubin.rubin_alert_record`'s history entries); None writes none.
    """
    if cutout == b"":
        cutout = rubin_cutout_bytes()
    record = rubin_alert_record(
        version,
        diaSourceId=diaSourceId,
        diaObjectId=diaObjectId,
        midpointMjdTai=midpointMjdTai,
        band=band,
        ra=150.0,
        dec=2.0,
        psfFlux=psfFlux,
        psfFluxErr=10.0,
        cutoutDifference=cutout,
        prvDiaSources=prvDiaSources,
        prvDiaForcedSources=prvDiaForcedSources,
    )
    return encode_rubin_message(record, version)


def make_trees(models: int = 2, seed: int = 0, iterations: int = 8):
    """History trees fitted by scikit-learn on random statistics: real arrays, meaningless answers.

    Returns the :class:`~broker_plugin.inference.trees.BoostedTrees` and the fitted estimators (the
    reference). Every fifth value of one feature is NaN, so the splits learn where missing values go.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    from broker_plugin.inference.history_statistics import HISTORY_STATISTICS
    from broker_plugin_train.trees import from_sklearn

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, HISTORY_STATISTICS))
    x[::5, 3] = np.nan
    y = (x[:, 0] > 0).astype(int) + 2 * (np.nan_to_num(x[:, 3]) > 0.5)
    estimators = [
        HistGradientBoostingClassifier(max_iter=iterations, max_leaf_nodes=7, random_state=seed + m).fit(
            x[m::models], y[m::models]
        )
        for m in range(models)
    ]
    return from_sklearn(estimators), estimators


def make_artifact(
    directory: Path,
    net: str = "convention-small",
    members: int = 2,
    *,
    shared_backbone: bool = False,
    trees: bool = False,
    **overrides: object,
) -> Path:
    """A model artifact with random (seeded) weights: real format, meaningless predictions.

    ``shared_backbone``: every member takes the first one's tensors except its head and history layers
    after the GRU, as the default recipe's fold members share one frozen stage-1 backbone. ``trees``:
    with history trees (:func:`make_trees`; a history net only).
    """
    import torch

    from broker_plugin.inference import create_net
    from broker_plugin.inference.artifact import save_artifact
    from broker_plugin.inference.preprocess import FluxNormalisation

    nets = []
    for seed in range(members):
        torch.manual_seed(seed)
        nets.append(create_net(net, **overrides).eval())
    if shared_backbone:
        share_backbone(nets, [0] * members)
    save_artifact(
        directory,
        nets,
        normalisation=FluxNormalisation(),
        pixel_scale_arcsec=0.4,
        training_data_hash="test-random-weights",
        trees=make_trees()[0] if trees else None,
    )
    return directory


def share_backbone(members: list, backbone_of: list[int]) -> list:
    """Give ``members`` the backbones ``backbone_of`` names, as stage 2 on shared stage-1 backbones does.

    Member ``i`` takes every tensor of the first member of backbone ``backbone_of[i]`` except its head
    and a history net's layers after the GRU, which stay its own.
    """
    from broker_plugin.inference.ensemble import MEMBER_OWN_PREFIXES

    for i, g in enumerate(backbone_of):
        source = members[backbone_of.index(g)].state_dict()
        own = members[i].state_dict()
        members[i].load_state_dict(
            {k: (v if k.startswith(MEMBER_OWN_PREFIXES) else source[k].clone()) for k, v in own.items()}
        )
    return members


def object_alerts(
    diaObjectId: int,
    n: int,
    *,
    first_source: int,
    mjd0: float = 60_000.0,
    bands: str = "grizu",
    version: str = "11.1",
) -> list[bytes]:
    """``n`` framed Rubin alerts of one object, one per night, cycling through ``bands``.

    Each carries its history as Rubin sends it: the earlier alerts as ``prvDiaSources``, and forced
    photometry of every earlier visit, the alerts' and an undetected one between each two, as
    ``prvDiaForcedSources``.
    """
    rng = np.random.default_rng(diaObjectId)
    out: list[bytes] = []
    detections: list[dict] = []
    forced: list[dict] = []
    for k in range(n):
        size = int(rng.integers(30, 80))
        rotation, flux = float(rng.uniform(0, 360)), float(rng.uniform(200, 3000))
        cutout = rubin_cutout_bytes(size=size, rotation_deg=rotation, flux=flux)
        band, mjd = bands[k % len(bands)], mjd0 + 1.7 * k
        out.append(
            rubin_message(
                version,
                diaSourceId=first_source + k,
                diaObjectId=diaObjectId,
                cutout=cutout,
                band=band,
                midpointMjdTai=mjd,
                psfFlux=flux,
                prvDiaSources=list(detections),
                prvDiaForcedSources=list(forced),
            )
        )
        point = {"midpointMjdTai": mjd, "band": band, "psfFlux": flux, "psfFluxErr": 10.0}
        detections.append({**point, "diaSourceId": first_source + k})
        forced.append({**point, "diaForcedSourceId": 10 * (first_source + k)})
        undetected = {"midpointMjdTai": mjd + 0.85, "band": band, "psfFlux": float(rng.normal(0, 10))}
        forced.append({**undetected, "psfFluxErr": 10.0, "diaForcedSourceId": 10 * (first_source + k) + 1})
    return out


def inbound_of(
    decoder: AlertDecoder, messages: list[bytes], alert_timestamp_ms: int | None = None
) -> list[Inbound]:
    """Pipeline input for framed messages: every decoded alert, its ref the message's index."""
    return [
        Inbound(alert, alert_timestamp_ms, i)
        for i, message in enumerate(messages)
        for alert in decoder.decode_message(message)
    ]
