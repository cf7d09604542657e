"""The state-store contract (``broker_plugin.state.base``), one suite run against SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import random
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from broker_plugin.records import PhotometryHistory
from broker_plugin.state.base import StateStore, object_key
from tests.state.conftest import FakeClock, StoreFactory, assert_same_frame, make_frame


def ids(store: StateStore, key: str) -> list[int]:
    return [frame.diaSourceId for frame in store.frames(key)]


def test_frames_round_trip_bit_exact(store: StateStore) -> None:
    frames = [make_frame(11, 0.1), make_frame(12, 0.2, band="g")]
    frames.append(make_frame(13, 0.3))
    # Odd but valid values survive bit for bit: signed zero, the smallest subnormal, the largest flux.
    frames[2].mask[0, :3] = True
    frames[2].data[0, :3] = [-0.0, np.float32(1e-45), 1e12]
    result = store.add_frames("rubin:1", frames)
    assert result.new == (11, 12, 13)
    assert result.n_frames == 3
    assert not result.inserted_before_last
    for stored, original in zip(store.frames("rubin:1"), frames, strict=True):
        assert_same_frame(stored, original)


def test_unknown_object_is_empty(store: StateStore) -> None:
    assert store.frames("rubin:404") == []
    assert store.frame_count("rubin:404") == 0
    assert store.get_cache("rubin:404", "v1") is None
    assert store.object_count() == 0
    assert store.add_frames("rubin:404", []).new == ()
    assert store.object_count() == 0


def test_idempotent_by_dia_source_id(store: StateStore) -> None:
    key = object_key("rubin", 7)
    first = store.add_frames(key, [make_frame(1, 10.0), make_frame(2, 11.0)])
    assert first.new == (1, 2)
    # A redelivered batch: nothing new, nothing duplicated.
    again = store.add_frames(key, [make_frame(1, 10.0), make_frame(2, 11.0)])
    assert again.new == ()
    assert again.n_frames == 2
    assert not again.inserted_before_last
    # Redeliveries mixed with a new frame, and a duplicate inside one call.
    mixed = store.add_frames(key, [make_frame(2, 11.0), make_frame(3, 12.0), make_frame(3, 12.0)])
    assert mixed.new == (3,)
    assert mixed.n_frames == 3
    assert ids(store, key) == [1, 2, 3]
    assert store.frame_count(key) == 3


def test_first_copy_wins(store: StateStore) -> None:
    original = make_frame(5, 10.0)
    store.add_frames("k", [original])
    store.add_frames("k", [make_frame(5, 99.0, band="z")])  # same id, other content: ignored
    (stored,) = store.frames("k")
    assert_same_frame(stored, original)


def test_ordered_by_time_whatever_the_arrival(store: StateStore) -> None:
    key = "ztf:ZTF21acqeepb"
    first = store.add_frames(key, [make_frame(50, 5.0)])
    assert not first.inserted_before_last and first.last_before is None
    late = store.add_frames(key, [make_frame(10, 1.0)])
    assert late.new == (10,)
    assert late.inserted_before_last
    # The newest stored frame before the call, by time: what a current cache must end with.
    assert late.last_before == (make_frame(50, 5.0).midpointMjdTai, 50)
    assert store.add_frames(key, [make_frame(10, 1.0)]).last_before == (
        make_frame(50, 5.0).midpointMjdTai,
        50,
    )
    assert not store.add_frames(key, [make_frame(60, 6.0)]).inserted_before_last
    # One call, frames out of order among themselves, one of them before the stored last.
    mixed = store.add_frames(key, [make_frame(80, 8.0), make_frame(30, 3.0)])
    assert mixed.inserted_before_last
    assert ids(store, key) == [10, 30, 50, 60, 80]
    times = [frame.midpointMjdTai for frame in store.frames(key)]
    assert times == sorted(times)


def test_ties_in_time_are_ordered_by_dia_source_id(store: StateStore) -> None:
    assert not store.add_frames("k", [make_frame(20, 5.0)]).inserted_before_last
    tie_before = store.add_frames("k", [make_frame(10, 5.0)])
    assert tie_before.inserted_before_last
    assert not store.add_frames("k", [make_frame(30, 5.0)]).inserted_before_last
    assert ids(store, "k") == [10, 20, 30]


def test_objects_are_independent(store: StateStore) -> None:
    store.add_frames("rubin:1", [make_frame(1, 1.0)])
    result = store.add_frames("rubin:2", [make_frame(1, 1.0), make_frame(2, 0.5)])
    assert result.new == (1, 2)  # the same diaSourceId under another object is another frame
    assert not result.inserted_before_last
    assert ids(store, "rubin:1") == [1]
    assert ids(store, "rubin:2") == [2, 1]
    assert store.object_count() == 2


def test_pruned_to_newest(make_store: StoreFactory) -> None:
    store = make_store(max_frames_per_object=3)
    result = store.add_frames("k", [make_frame(i, float(i)) for i in (5, 1, 4, 2, 3)])
    assert result.n_frames == 3
    assert result.new == (5, 4, 3)  # 1 and 2 were pruned in the same call: never stored
    assert ids(store, "k") == [3, 4, 5]
    # Older than everything kept: stored and pruned at once, so not new and no reordering.
    old = store.add_frames("k", [make_frame(1, 1.0)])
    assert (old.new, old.n_frames, old.inserted_before_last) == ((), 3, False)
    newer = store.add_frames("k", [make_frame(6, 6.0)])
    assert (newer.new, newer.n_frames) == ((6,), 3)
    assert ids(store, "k") == [4, 5, 6]
    # Out of order but within the newest three: kept, and it moves the sequence.
    inside = store.add_frames("k", [make_frame(7, 4.5)])
    assert (inside.new, inside.inserted_before_last) == ((7,), True)
    assert ids(store, "k") == [7, 5, 6]
    assert store.frame_count("k") == 3


def test_invalid_frame_stores_nothing(store: StateStore) -> None:
    store.add_frames("k", [make_frame(1, 1.0)])
    bad = make_frame(3, 3.0)
    object.__setattr__(bad, "data", bad.data.astype(np.float64))
    with pytest.raises(ValueError, match="float32"):
        store.add_frames("k", [make_frame(2, 2.0), bad])
    with pytest.raises(ValueError, match="midpointMjdTai"):
        store.add_frames("k", [make_frame(4, float("nan"))])
    assert ids(store, "k") == [1]


def test_cache_put_get_replace_and_model_versions(store: StateStore) -> None:
    store.add_frames("k", [make_frame(1, 1.0)])
    assert store.get_cache("k", "m1") is None
    store.put_cache("k", "m1", b"tokens-1")
    store.put_cache("k", "m2", b"other model")
    assert store.get_cache("k", "m1") == b"tokens-1"
    store.put_cache("k", "m1", b"tokens-2")
    assert store.get_cache("k", "m1") == b"tokens-2"
    assert store.get_cache("k", "m2") == b"other model"
    assert store.get_cache("other", "m1") is None
    blob = bytes(range(256)) * 100
    store.put_cache("k", "m1", blob)
    assert store.get_cache("k", "m1") == blob


def test_cache_batch_writes_like_single_writes(store: StateStore) -> None:
    store.add_batch([("a", [make_frame(1, 1.0)]), ("b", [make_frame(2, 1.0)])])
    store.put_caches([("a", "m1", b"A1"), ("b", "m1", b"B1"), ("ghost", "m1", b"G")])
    store.put_caches([("a", "m1", b"A2")])
    assert (store.get_cache("a", "m1"), store.get_cache("b", "m1")) == (b"A2", b"B1")
    store.put_caches([("b", "m1", b"B2"), ("b", "m1", b"B3")])  # one object twice: the later write wins
    assert store.get_cache("b", "m1") == b"B3"
    assert store.get_cache("ghost", "m1") is None


def test_cache_of_unknown_object_is_not_kept(store: StateStore) -> None:
    store.put_cache("never-stored", "m1", b"x")
    assert store.get_cache("never-stored", "m1") is None
    assert store.object_count() == 0


def test_expire_by_idle_time(store: StateStore, clock: FakeClock) -> None:
    store.add_frames("old", [make_frame(1, 1.0)])
    store.put_cache("old", "m1", b"old tokens")
    clock.advance(100)
    store.add_frames("young", [make_frame(2, 1.0)])
    clock.advance(50)
    store.add_frames("old", [make_frame(1, 1.0)])  # a redelivery is not a new frame: no refresh
    assert store.object_count() == 2
    assert store.expire(151) == 0
    assert store.expire(150) == 1  # idle for exactly 150 s counts
    assert store.object_count() == 1
    assert store.frames("old") == []
    assert store.frame_count("old") == 0
    assert store.get_cache("old", "m1") is None
    assert ids(store, "young") == [2]
    # An expired object starts afresh: its frames are new again, its old cache does not come back.
    again = store.add_frames("old", [make_frame(1, 1.0)])
    assert again.new == (1,)
    assert store.get_cache("old", "m1") is None
    clock.advance(10)
    assert store.expire(0) == 2
    assert store.object_count() == 0


def test_new_frame_refreshes_idle_time(store: StateStore, clock: FakeClock) -> None:
    store.add_frames("k", [make_frame(1, 1.0)])
    clock.advance(100)
    store.add_frames("k", [make_frame(2, 2.0)])
    clock.advance(50)
    assert store.expire(100) == 0
    assert store.frame_count("k") == 2


def test_expire_many_objects(store: StateStore, clock: FakeClock) -> None:
    # More than one PostgreSQL expiry batch.
    for i in range(450):
        store.add_frames(f"rubin:{i}", [make_frame(i, 1.0)])
    clock.advance(10)
    store.add_frames("rubin:fresh", [make_frame(1, 1.0)])
    assert store.object_count() == 451
    assert store.expire(5) == 450
    assert store.object_count() == 1


def test_survives_reopen(make_store: StoreFactory) -> None:
    first = make_store()
    first.add_frames("k", [make_frame(2, 2.0), make_frame(1, 1.0)])
    first.put_cache("k", "m1", b"t")
    first.close()
    with pytest.raises(RuntimeError, match="closed"):
        first.frames("k")
    second = make_store()  # schema creation is idempotent
    assert ids(second, "k") == [1, 2]
    assert second.get_cache("k", "m1") == b"t"
    assert second.add_frames("k", [make_frame(1, 1.0)]).new == ()


def test_thread_safe(make_store: StoreFactory) -> None:
    store = make_store(max_frames_per_object=1000)
    n_threads, per_thread = 4, 30
    shared = [make_frame(1000 + i, float(i)) for i in range(60)]
    barrier = threading.Barrier(n_threads)

    def work(t: int) -> list[int]:
        rng = random.Random(t)
        order = shared[:]
        rng.shuffle(order)  # every thread adds every shared frame, in its own order
        new: list[int] = []
        barrier.wait()
        for i in range(per_thread):
            new += store.add_frames("shared", order[2 * i : 2 * i + 2]).new
            own = store.add_frames(f"own:{t}", [make_frame(t * 100 + i, float(-i))])
            assert own.new == (t * 100 + i,)
            store.put_cache("shared", f"m{t}", bytes([i]))
            assert store.frame_count(f"own:{t}") == i + 1
        return new

    with ThreadPoolExecutor(n_threads) as pool:
        reported = [source_id for new in pool.map(work, range(n_threads)) for source_id in new]
    assert Counter(reported) == Counter(frame.diaSourceId for frame in shared)
    assert ids(store, "shared") == [frame.diaSourceId for frame in shared]
    for t in range(n_threads):
        assert ids(store, f"own:{t}") == [t * 100 + i for i in reversed(range(per_thread))]
        assert store.get_cache("shared", f"m{t}") == bytes([per_thread - 1])
    assert store.object_count() == n_threads + 1


@pytest.mark.parametrize("max_frames", [1000, 10])
def test_two_instances_write_one_object(make_store: StoreFactory, max_frames: int) -> None:
    """Two plugin processes (here two stores, each with its own connections) receive one object's
    alerts, redeliveries included: each frame is stored once and reported new exactly once in total."""
    stores = [make_store(max_frames_per_object=max_frames) for _ in range(2)]
    frames = [make_frame(5000 + i, float((i * 7919) % 40)) for i in range(40)]
    barrier = threading.Barrier(2)

    def work(s: int) -> list[int]:
        order = frames[:]
        random.Random(s).shuffle(order)
        new: list[int] = []
        barrier.wait()
        for i in range(0, len(order), 3):
            new += stores[s].add_frames("rubin:42", order[i : i + 3]).new
        return new

    with ThreadPoolExecutor(2) as pool:
        reported = [source_id for new in pool.map(work, range(2)) for source_id in new]
    counts = Counter(reported)
    assert max(counts.values()) == 1
    newest = sorted(frames, key=lambda f: (f.midpointMjdTai, f.diaSourceId))[-max_frames:]
    expected = [frame.diaSourceId for frame in newest]
    for store in stores:
        assert ids(store, "rubin:42") == expected
        assert store.frame_count("rubin:42") == len(expected)
    assert set(expected) <= set(counts)
    if max_frames >= len(frames):
        assert sorted(counts) == sorted(frame.diaSourceId for frame in frames)


def test_add_batch(store: StateStore) -> None:
    store.add_frames("a", [make_frame(1, 5.0)])
    results = store.add_batch(
        [
            ("a", [make_frame(2, 1.0), make_frame(1, 5.0)]),
            ("b", [make_frame(1, 1.0)]),
            ("a", [make_frame(3, 9.0), make_frame(2, 1.0)]),  # the same object twice in one batch
            ("c", []),
        ]
    )
    assert [(r.new, r.n_frames, r.inserted_before_last) for r in results] == [
        ((2,), 2, True), ((1,), 1, False), ((3,), 3, False), ((), 0, False),
    ]  # fmt: skip
    assert ids(store, "a") == [2, 1, 3]
    assert store.object_count() == 2
    assert store.add_batch([]) == []
    bad = make_frame(9, float("inf"))
    with pytest.raises(ValueError, match="midpointMjdTai"):
        store.add_batch([("d", [make_frame(8, 1.0)]), ("e", [bad])])
    assert store.frame_count("d") == 0  # all or nothing


def test_two_instances_batch_overlapping_objects(make_store: StoreFactory) -> None:
    """Batches spanning the same objects in opposite orders from two instances: no deadlock, no loss."""
    stores = [make_store() for _ in range(2)]
    keys = [f"rubin:{i}" for i in range(12)]
    barrier = threading.Barrier(2)

    def work(s: int) -> list[int]:
        order = keys if s == 0 else keys[::-1]
        new: list[int] = []
        barrier.wait()
        for round_ in range(15):
            batch = [(key, [make_frame(1000 * keys.index(key) + round_, float(round_))]) for key in order]
            for result in stores[s].add_batch(batch):
                new += result.new
        return new

    with ThreadPoolExecutor(2) as pool:
        reported = [source_id for new in pool.map(work, range(2)) for source_id in new]
    assert Counter(reported) == Counter(1000 * k + r for k in range(12) for r in range(15))
    for k, key in enumerate(keys):
        assert ids(stores[1], key) == [1000 * k + r for r in range(15)]


def test_invalid_stored_frames_are_skipped_reported_and_removed(make_store: StoreFactory) -> None:
    """Frames an older version stored without today's checks never reach the model (check_frame)."""
    store = make_store()
    seen: list[tuple[str, int, str]] = []
    store.watch_invalid_frames(lambda key, source_id, why: seen.append((key, source_id, why)))
    nan_pixel = make_frame(2, 2.0)
    nan_pixel.mask[0, 0] = True
    nan_pixel.data[0, 0] = np.nan
    huge = make_frame(3, 3.0)
    huge.mask[1, 1] = True
    huge.data[1, 1] = 3e38
    unknown_band = make_frame(4, 4.0, band="q")
    ancient = make_frame(5, -59_000.0)  # MJD 1000: before any survey
    result = store.add_frames(
        "k", [make_frame(1, 1.0), nan_pixel, huge, unknown_band, ancient, make_frame(6, 6.0)]
    )
    assert result.n_frames == 6  # stored as an older version would have: no check at write time
    assert ids(store, "k") == [1, 6]
    assert [(key, source_id) for key, source_id, _ in seen] == [("k", 5), ("k", 2), ("k", 3), ("k", 4)]
    assert "non-finite" in seen[1][2] and "band" in seen[3][2]
    # Removed, not merely hidden: counts and rankings see the valid frames only, and a second store
    # instance (another process) reads the same.
    assert store.frame_count("k") == 2
    assert ids(make_store(), "k") == [1, 6]
    after = store.add_frames("k", [make_frame(7, 7.0)])
    assert (after.new, after.n_frames) == ((7,), 3)
    # A redelivery of a removed frame's alert, normalised by today's code, is stored afresh.
    assert store.add_frames("k", [make_frame(2, 2.0)]).new == (2,)
    assert ids(store, "k") == [1, 2, 6, 7]
    assert len(seen) == 4  # each invalid frame reported once


def test_history_is_not_stored(store: StateStore) -> None:
    history = PhotometryHistory.from_points([60_000.0], [2], [5.0], [1.0], [True])
    frame = dataclasses.replace(make_frame(21, 0.1), history=history)
    store.add_frames("rubin:7", [frame])
    [stored] = store.frames("rubin:7")
    assert stored.history is None  # a history serves the alert that brought it only
    assert_same_frame(stored, frame)  # everything else round-trips as before
