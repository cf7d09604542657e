"""Peak memory of one hostile message, per kind of bomb: every one stays under a stated limit.

Usage: ``python benchmarks/bench_hostile.py [--limit-mb 1024] [--out benchmarks/results/hostile_memory.json]``

Each case runs in a fresh Python process that imports the decoder and the stamp normaliser, builds them
from default :class:`~broker_plugin.config.Settings`, records its resident memory, then decodes and
normalises the one message (as the service does) and reports its peak resident memory (``ru_maxrss``),
the outcome (the typed reject reason, or ``accepted``) and the time taken. The messages come from
``tests/hostile.py`` (built from real alerts) plus bombs sized like the ones found in the wild: a
1.1 MB deflate container and a 1.1 MB gzip cutout that inflate to about 1 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, resource, sys, time
from broker_plugin.config import Settings
from broker_plugin.exceptions import BrokerPluginError
from broker_plugin.factory import build_decoder
from broker_plugin.stamps import StampNormaliser

def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

settings = Settings(_env_file=None)
decoder = build_decoder(settings)
normaliser = StampNormaliser(settings.stamps, settings.limits)
raw = open(sys.argv[1], "rb").read()
baseline = rss_mb()
start = time.perf_counter()
try:
    for alert in decoder.decode_message(raw):
        normaliser.normalise(alert)
    outcome = "accepted"
except BrokerPluginError as exc:
    outcome = exc.reason
except Exception as exc:
    outcome = f"crash: {type(exc).__name__}"
print(json.dumps({"baseline_mb": round(baseline), "peak_rss_mb": round(rss_mb()),
                  "seconds": round(time.perf_counter() - start, 3), "outcome": outcome}))
"""


def cases() -> dict[str, bytes]:
    from tests.hostile import HOSTILE, deflate_bomb, gzip_bomb, ztf_alert, ztf_cutout_edit

    out = {name: builder(9_000 + i) for i, (name, (builder, _)) in enumerate(HOSTILE.items())}
    out["deflate_bomb_1GB"] = deflate_bomb(1_000_000_000)
    out["ztf_gzip_bomb_1GB"] = ztf_alert(ztf_cutout_edit(gzip_bomb(1_000_000_000)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-mb", type=int, default=1024)
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "hostile_memory.json")
    args = parser.parse_args()
    results, baseline = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, raw in cases().items():
            path = Path(tmp) / f"{name}.bin"
            path.write_bytes(raw)
            try:
                done = subprocess.run([sys.executable, "-c", CHILD, str(path)], cwd=ROOT, capture_output=True,
                                      text=True, timeout=args.timeout_s, check=False)  # fmt: skip
                row = json.loads(done.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                row = {
                    "baseline_mb": None,
                    "peak_rss_mb": None,
                    "seconds": args.timeout_s,
                    "outcome": "timeout",
                }
            except (json.JSONDecodeError, IndexError):
                row = {"baseline_mb": None, "peak_rss_mb": None, "seconds": None, "outcome": "died"}
            baseline = max(baseline, row["baseline_mb"] or 0)
            results.append({"case": name, "message_bytes": len(raw), **row})
            print(json.dumps(results[-1]), flush=True)
    over = [r["case"] for r in results if r["peak_rss_mb"] is None or r["peak_rss_mb"] > args.limit_mb]
    report = {"benchmark": "peak memory per hostile message", "limit_mb": args.limit_mb,
              "baseline_mb": baseline, "over_limit": over,
              "machine": {"cpu": platform.machine(), "python": platform.python_version(),
                          "cores": os.cpu_count()},
              "results": results}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if over:
        print(f"over {args.limit_mb} MB or failed: {over}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
