"""``python -m broker_plugin demo``: a self-contained run that needs no outside service.

Until the streaming service lands, the demo exercises the foundation end to end on generated data:
Rubin alerts with cutouts written as Rubin writes them (random rotation and size, every bundled schema
version, Confluent framing), plus deliberately broken messages; each is decoded and normalised, and a
summary says what happened to each and how fast.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TextIO

import numpy as np

from broker_plugin.config import Settings
from broker_plugin.exceptions import BrokerPluginError
from broker_plugin.factory import build_decoder
from broker_plugin.serde.rubin import encode_rubin_message, rubin_alert_record
from broker_plugin.serde.schemas import bundled_rubin_versions
from broker_plugin.stamps import RubinCutoutGeometry, StampNormaliser, write_rubin_cutout

_N_ALERTS = 300
_PSF_FWHM_ARCSEC = 0.8


def generate_messages(n: int, seed: int = 0) -> list[bytes]:
    """``n`` framed Rubin alerts with a point source in a rotated cutout, plus four broken messages."""
    rng = np.random.default_rng(seed)
    versions = bundled_rubin_versions()
    messages = []
    for i in range(n):
        size = int(rng.integers(30, 103))
        geometry = RubinCutoutGeometry(size=size, rotation_deg=float(rng.uniform(0, 360)))
        east, north = geometry.sky_offsets()
        sigma_px = _PSF_FWHM_ARCSEC / 2.355 / geometry.pixel_scale_arcsec
        flux = float(rng.uniform(500, 5000))
        image = flux * np.exp(-(east**2 + north**2) / (2 * (sigma_px * 0.2) ** 2)) / (2 * np.pi * sigma_px**2)
        image += rng.normal(0, 5.0, image.shape)
        cutout = write_rubin_cutout(image, np.full(image.shape, 25.0), geometry, 150.0, 2.2)
        version = versions[i % len(versions)]
        record = rubin_alert_record(
            version,
            diaSourceId=10_000 + i,
            diaObjectId=1 + i // 5,
            midpointMjdTai=60_000.0 + i,
            band="ugrizy"[i % 6],
            ra=150.0,
            dec=2.2,
            psfFlux=flux,
            psfFluxErr=5.0,
            cutoutDifference=cutout,
        )
        messages.append(encode_rubin_message(record, version))
    good = messages[0]
    messages += [
        b"\x07" + good[1:],
        good[:1] + b"\x00\x00\x99\x99" + good[5:],
        good[: len(good) // 2],
        bytes(rng.integers(0, 256, 500, dtype=np.uint8)),
    ]
    return messages


def run_demo(settings: Settings, out: TextIO) -> int:
    """Decode and normalise generated alerts; print a summary. Exit status 0 when all went as expected."""
    messages = generate_messages(_N_ALERTS)
    decoder = build_decoder(settings)
    normaliser = StampNormaliser(settings.stamps)
    outcomes: Counter[str] = Counter()
    centred = 0
    start = time.perf_counter()
    for raw in messages:
        try:
            for alert in decoder.decode_message(raw):
                frame = normaliser.normalise(alert)
                outcomes["ok"] += 1
                peak = np.unravel_index(np.argmax(frame.data), frame.data.shape)
                centred += all(abs(p - (settings.stamps.size - 1) / 2) <= 0.5 for p in peak)
        except BrokerPluginError as exc:
            outcomes[exc.reason] += 1
    elapsed = time.perf_counter() - start
    out.write(
        f"broker_plugin demo: {len(messages)} messages ({_N_ALERTS} generated Rubin alerts over "
        f"schemas {', '.join(bundled_rubin_versions())}, plus 4 broken ones)\n"
    )
    for outcome, count in sorted(outcomes.items()):
        out.write(f"  {outcome:<20} {count}\n")
    out.write(f"  point source on the frame centre: {centred} of {outcomes['ok']}\n")
    out.write(f"  decode + normalise: {len(messages) / elapsed:.0f} messages/s on one core\n")
    out.write("The streaming service (Kafka in, classifications out) is not built yet; see the README.\n")
    return 0 if outcomes["ok"] == _N_ALERTS and sum(outcomes.values()) == len(messages) else 1
