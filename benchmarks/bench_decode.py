"""Decode + normalise throughput, per core, for Rubin-format and ZTF alerts.

Usage: ``python benchmarks/bench_decode.py [--n 2000] [--out benchmarks/results/decode.json]``

Throughput is alerts per CPU-second of this (single-threaded) process, i.e. per core: the machine is
often shared, and CPU time is what one core spends whatever else runs. Wall-clock rates are reported too.
Each stage is timed separately (Avro decode, FITS read + WCS, resampling) to show where the time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from broker_plugin import __version__
from broker_plugin.config import StampSettings
from broker_plugin.serde.alerts import AlertDecoder
from broker_plugin.serde.files import iter_alert_payloads
from broker_plugin.serde.rubin import encode_rubin_message, rubin_alert_record
from broker_plugin.serde.schemas import RubinSchemaStore, latest_rubin_version
from broker_plugin.stamps import RubinCutoutGeometry, StampNormaliser, write_rubin_cutout

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_ZTF = ROOT / "tests" / "data" / "ztf"
#: The 145 shared real ZTF alerts when this machine has them, else the 6 golden ones.
ZTF_DIRS = (ROOT.parent / "shared" / "data" / "ztf", Path("/work/shared/data/ztf"), GOLDEN_ZTF)


def rubin_messages(n: int, seed: int = 0) -> list[bytes]:
    """``n`` latest-schema Rubin alerts, cutouts 30..102 px at random rotations, noise + a source."""
    rng = np.random.default_rng(seed)
    version = latest_rubin_version()
    out = []
    for i in range(min(n, 400)):  # distinct cutouts; the rest repeat them
        size = int(rng.integers(30, 103))
        geometry = RubinCutoutGeometry(size=size, rotation_deg=float(rng.uniform(0, 360)))
        east, north = geometry.sky_offsets()
        image = 300 * np.exp(-(east**2 + north**2) / 0.2) + rng.normal(0, 5, (size, size))
        cutout = write_rubin_cutout(image, np.full((size, size), 25.0), geometry, 10.0, -5.0)
        record = rubin_alert_record(
            version,
            diaSourceId=i,
            diaObjectId=i,
            midpointMjdTai=60_000.0,
            band="r",
            ra=10.0,
            dec=-5.0,
            psfFlux=1.0,
            psfFluxErr=1.0,
            cutoutDifference=cutout,
        )
        out.append(encode_rubin_message(record, version))
    return [out[i % len(out)] for i in range(n)]


def ztf_messages(n: int) -> list[bytes]:
    folder = next(p for p in ZTF_DIRS if p.is_dir())
    raw = [payload for _, payload in iter_alert_payloads(folder)]
    return [raw[i % len(raw)] for i in range(n)]


def measure(messages: list[bytes], decoder: AlertDecoder, normaliser: StampNormaliser) -> dict:
    for raw in messages[:50]:  # warm caches (schemas, imports)
        normaliser.normalise(decoder.decode_message(raw)[0])
    cpu0, wall0 = time.process_time(), time.perf_counter()
    alerts = [decoder.decode_message(raw)[0] for raw in messages]
    cpu_decode = time.process_time() - cpu0
    cpu1 = time.process_time()
    for alert in alerts:
        normaliser.normalise(alert)
    cpu_stamp = time.process_time() - cpu1
    wall = time.perf_counter() - wall0
    cpu = cpu_decode + cpu_stamp
    return {
        "alerts": len(messages),
        "mean_message_bytes": int(np.mean([len(m) for m in messages])),
        "alerts_per_cpu_second": round(len(messages) / cpu, 1),
        "alerts_per_wall_second": round(len(messages) / wall, 1),
        "ms_per_alert": {
            "avro_decode": round(1e3 * cpu_decode / len(messages), 3),
            "stamp_normalise": round(1e3 * cpu_stamp / len(messages), 3),
            "total": round(1e3 * cpu / len(messages), 3),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "decode.json")
    args = parser.parse_args()
    decoder = AlertDecoder(RubinSchemaStore())
    normaliser = StampNormaliser(StampSettings())
    result = {
        "benchmark": "decode+normalise",
        "plugin_version": __version__,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
        "goal_alerts_per_core_second": 1000,
        "rubin": measure(rubin_messages(args.n), decoder, normaliser),
        "ztf": measure(ztf_messages(args.n), decoder, normaliser),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
