"""Bombs of every kind are refused quickly, in bounded memory (measured in a subprocess).

``bombs.py`` decodes each bomb in a fresh process capped at 4 GiB of address space, and reports the
error, the time and the peak of Python allocations (tracemalloc) per bomb, and the growth of the peak
resident set (ru_maxrss) over the whole run. Before the hardening the record-count bomb grew without
bound (6.2 GB in 57 s), the deflate bomb inflated to 2.36 GB, and the recursive schema crashed the
interpreter with a segmentation fault.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: The stated bounds: per bomb, Python allocations while decoding; for the run, peak RSS growth.
PEAK_MB = 100.0
RSS_GROWTH_MB = 200.0
SECONDS = 5.0

EXPECTED = {
    "deflate_bomb_2.36GB": "ResourceLimitError",
    "rubin_8_blocks_of_15MB": "ResourceLimitError",  # over max_message_inflated_bytes (64 MB)
    "rubin_8_blocks_of_15MB_file": "8 items",  # a file is read block by block: same memory, all alerts
    "record_count_2^40_empty_schema": "ResourceLimitError",
    "record_count_2^40": "ResourceLimitError",
    "array_count_2^40_null_items": "ResourceLimitError",
    "array_count_2^40_long_items": "MalformedAvroError",  # skipped item by item until the bytes end
    "array_count_2^40_long_items_full": "TruncatedMessageError",
    "block_size_2^62": "ResourceLimitError",
    "recursive_schema_1M_deep": "ResourceLimitError",
    "rubin_prvDiaSources_2^40": "TruncatedMessageError",
    "decimal_1MB": "1 items",  # read as plain bytes, not converted
}


@pytest.fixture(scope="module")
def report() -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "tests.serde.bombs"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bomb_is_refused_quickly_in_bounded_memory(name: str, report: dict) -> None:
    result = report["bombs"][name]
    assert result["outcome"] == EXPECTED[name]
    assert result["seconds"] < SECONDS
    assert result["peak_mb"] < PEAK_MB


def test_whole_run_stays_within_the_memory_bound(report: dict) -> None:
    assert set(report["bombs"]) == set(EXPECTED)
    assert report["maxrss_growth_mb"] < RSS_GROWTH_MB
