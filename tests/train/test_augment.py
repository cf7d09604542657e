import numpy as np

from broker_plugin.inference.preprocess import ModelInput, window_start
from broker_plugin.records import PhotometryHistory
from broker_plugin_train.augment import history_view, random_view, serving_window


def _inp(n: int) -> ModelInput:
    x = np.arange(n * 4 * 4, dtype=np.float32).reshape(n, 4, 4)
    return ModelInput(x, np.arange(n) % 5 + 1)


def test_serving_window_is_the_service_window():
    inp = _inp(110)
    w = serving_window(inp, 3, 33)
    assert len(w) == 110 - window_start(110, 3, 33)
    np.testing.assert_array_equal(w.x[-1], inp.x[-1])


def test_random_views_are_prefixes_in_whole_chunks_and_capped():
    inp = _inp(100)
    rng = np.random.default_rng(0)
    for _ in range(50):
        v = random_view(
            inp,
            rng,
            chunk_size=3,
            max_chunks=33,
            max_frames=30,
            min_prefix=3,
            prefix_probability=0.7,
            augment=False,
        )
        assert 1 <= len(v) <= 30
        # a view is a contiguous run of frames starting at a chunk boundary
        start = int(v.x[0, 0, 0]) // 16
        assert start % 3 == 0
        np.testing.assert_array_equal(v.band, inp.band[start : start + len(v)])


def test_augmentation_is_the_same_for_every_frame():
    inp = _inp(9)
    rng = np.random.default_rng(3)
    v = random_view(
        inp,
        rng,
        chunk_size=3,
        max_chunks=33,
        max_frames=99,
        min_prefix=3,
        prefix_probability=0.0,
        augment=True,
    )
    candidates = [np.rot90(inp.x, k, axes=(1, 2)) for k in range(4)]
    candidates += [c[:, :, ::-1] for c in candidates]
    assert any(np.array_equal(v.x, c) for c in candidates)


def test_history_views_keep_detections_and_only_shrink():
    rng = np.random.default_rng(0)
    mjd = np.sort(rng.uniform(59970.0, 60100.0, 80))
    detected = rng.random(80) < 0.3
    history = PhotometryHistory.from_points(
        mjd, np.ones(80), rng.normal(0, 500, 80), np.full(80, 50.0), detected
    )
    frames = np.sort(mjd[detected])
    sizes, detections_only = [], 0
    for seed in range(200):
        view = history_view(history, frames, np.random.default_rng(seed))
        kept = set(view.midpointMjdTai.tolist())
        assert kept <= set(mjd.tolist())
        assert set(mjd[detected].tolist()) <= kept  # every alert carries its own detection
        assert view.midpointMjdTai.min() >= mjd.min()
        sizes.append(len(view))
        detections_only += not (~view.detected).any()
    assert min(sizes) < len(history) and max(sizes) <= len(history)
    assert 5 <= detections_only <= 40  # about DETECTIONS_ONLY_PROBABILITY of the draws
