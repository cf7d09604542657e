import numpy as np
import pytest
import torch

from broker_plugin.inference.artifact import save_artifact
from broker_plugin.inference.errors import InferenceInputError
from broker_plugin.inference.predictor import Predictor
from broker_plugin.inference.preprocess import FluxNormalisation, collate
from broker_plugin.records import Frame, StampFlag

from .conftest import make_input, make_members


@pytest.fixture(scope="module")
def predictor():
    members = make_members("convention-small", count=3)
    return Predictor(members, model_id="m", normalisation=FluxNormalisation(), device="cpu", max_batch_size=2)


def test_ensemble_mean_and_spread_of_member_probabilities(predictor):
    inp = make_input(20, 1)
    (pred,) = predictor.predict([inp])
    x, band = collate([inp], frames=21)
    with torch.inference_mode():
        member = np.stack(
            [m(torch.from_numpy(x), torch.from_numpy(band)).softmax(-1)[0].numpy() for m in predictor.members]
        )
    np.testing.assert_allclose(pred.probabilities, member.mean(0), atol=1e-6)
    np.testing.assert_allclose(pred.spread, member.std(0), atol=1e-6)
    assert pred.probabilities.sum() == pytest.approx(1.0, abs=1e-5) and pred.spread.max() > 0
    assert pred.n_frames == 20


def test_micro_batches_of_different_lengths_match_one_by_one(predictor):
    inputs = [make_input(n, 1, seed=n) for n in (130, 1, 17, 5, 99, 40)]
    batched = predictor.predict(inputs)  # max_batch_size=2: three micro-batches, sorted by length
    for inp, pred in zip(inputs, batched, strict=True):
        (alone,) = predictor.predict([inp])
        np.testing.assert_allclose(pred.probabilities, alone.probabilities, atol=1e-5)
    assert [p.n_frames for p in batched] == [97, 1, 17, 5, 99, 40]


def test_incremental_update_for_several_objects_matches_full(predictor):
    inputs = [make_input(n, 1, seed=n) for n in (7, 12, 3)]
    results = predictor.update([None, None, None], inputs)
    full = predictor.predict(inputs)
    for (pred, cache), ref, inp in zip(results, full, inputs, strict=True):
        np.testing.assert_allclose(pred.probabilities, ref.probabilities, atol=1e-5)
        assert cache.n_frames == len(inp)
    ((none, same),) = predictor.update([results[0][1]], [inputs[0][:0]])
    assert none is None and same is results[0][1]


def test_empty_sequences_are_refused(predictor):
    with pytest.raises(InferenceInputError):
        predictor.predict([make_input(0, 1)])


def test_from_artifact_and_frames(tmp_path):
    members = make_members("convention-small", count=2)
    save_artifact(
        tmp_path, members, normalisation=FluxNormalisation(), pixel_scale_arcsec=0.2, training_data_hash="x"
    )
    predictor = Predictor.from_artifact(tmp_path, expected_pixel_scale_arcsec=0.2, device="cpu")
    rng = np.random.default_rng(0)
    frames = [
        Frame(
            rng.normal(0, 100, (32, 32)).astype(np.float32),
            np.ones((32, 32), bool),
            StampFlag.NONE,
            band,
            60000.0 + k,
            k,
        )
        for k, band in enumerate("grizgr")
    ]
    (pred,) = predictor.predict_frames([frames])
    direct = Predictor(members, model_id="x", normalisation=FluxNormalisation(), device="cpu")
    (ref,) = direct.predict_frames([frames])
    np.testing.assert_allclose(pred.probabilities, ref.probabilities, atol=1e-6)
    assert predictor.class_names == ["AGN", "SNIa", "Variable", "SNOther"]


def test_history_trees_blend_with_the_members_in_every_path(tmp_path):
    from broker_plugin.inference.history import collate_history
    from broker_plugin.inference.trees import blend

    from ..factories import make_artifact
    from .conftest import make_context_input

    directory = make_artifact(tmp_path / "a", "convention-alert-small", 2, shared_backbone=True, trees=True)
    with_trees = Predictor.from_artifact(directory, device="cpu")
    members_only = Predictor(
        with_trees.members, model_id="m", normalisation=FluxNormalisation(), device="cpu"
    )
    assert with_trees.trees is not None and with_trees.net_weight == 0.5
    inputs = [make_context_input(n, seed=n) for n in (4, 11, 7)]
    full = with_trees.predict(inputs)
    alone = members_only.predict(inputs)
    tree_probs = with_trees.trees.history_probs(collate_history(inputs))
    for got, net, trees in zip(full, alone, tree_probs, strict=True):
        np.testing.assert_allclose(got.probabilities, blend(net.probabilities, trees, 0.5), atol=1e-6)
        np.testing.assert_allclose(got.spread, net.spread, atol=1e-7)  # the members' spread
        assert not np.allclose(got.probabilities, net.probabilities, atol=1e-3)
    # Incremental, one frame at a time: every step's answer is the full recompute's at that prefix.
    steps = with_trees.update_steps([None] * 3, inputs)
    for inp, (answers, _) in zip(inputs, steps, strict=True):
        for k, answer in enumerate(answers):
            (ref,) = with_trees.predict([inp[: k + 1]])
            np.testing.assert_allclose(answer.probabilities, ref.probabilities, atol=1e-5)


def test_trees_need_a_history_net():
    from ..factories import make_trees

    members = make_members("convention-small", count=1)
    with pytest.raises(InferenceInputError, match="history"):
        Predictor(
            members, model_id="m", normalisation=FluxNormalisation(), device="cpu", trees=make_trees()[0]
        )


def test_several_objects_preprocessed_at_once_equal_one_call_each(tmp_path):
    from broker_plugin.records import PhotometryHistory

    from ..factories import make_artifact

    directory = make_artifact(tmp_path / "a", "convention-alert-small", 1, trees=True)
    predictor = Predictor.from_artifact(directory, device="cpu")
    rng = np.random.default_rng(2)

    def frame(mjd: float, source: int) -> Frame:
        points = np.sort(rng.uniform(mjd - 40, mjd, 4))
        history = PhotometryHistory.from_points(
            points, np.ones(4, int), rng.normal(300, 50, 4), np.full(4, 30.0), rng.random(4) > 0.5
        )
        return Frame(
            rng.normal(0, 20, (32, 32)).astype(np.float32), np.ones((32, 32), bool), StampFlag.NONE,
            "gri"[source % 3], mjd, source, psfFlux=float(rng.normal(400, 40)), psfFluxErr=25.0,
            history=history,
        )  # fmt: skip

    sequences = [[frame(60000.0 + 3 * k, 10 * g + k) for k in range(n)] for g, n in enumerate((4, 1, 0, 6))]
    befores = [[frame(59990.0, 900 + g)] if g % 2 else [] for g in range(4)]
    triggers = [frame(60050.0, 800), None, None, frame(60001.0, 801)]  # late alerts ask for outputs
    together = predictor.preprocess_many(sequences, befores, triggers=triggers)
    for frames, before, trigger, got in zip(sequences, befores, triggers, together, strict=True):
        alone = predictor.preprocess(frames, before, trigger=trigger)
        for name in ("x", "band", "aux", "photometry", "presence", "mjd", "history"):
            np.testing.assert_array_equal(getattr(got, name), getattr(alone, name), err_msg=name)
        assert (got.first_mjd, got.prev_mjd) == pytest.approx((alone.first_mjd, alone.prev_mjd), nan_ok=True)
    assert together[0].history is not None and together[2].history is None
    # The trigger's history is read at the last frame: another trigger, other rows there only.
    plain = predictor.preprocess(sequences[0], befores[0])
    np.testing.assert_array_equal(plain.history[:-1], together[0].history[:-1])  # type: ignore[index]
    assert not np.array_equal(plain.history[-1], together[0].history[-1])  # type: ignore[index]
