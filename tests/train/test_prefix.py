import numpy as np
import pytest
import torch

from broker_plugin.inference import create_net
from broker_plugin.inference.preprocess import ModelInput
from broker_plugin_train.augment import serving_window
from broker_plugin_train.loop import batch_tensors
from broker_plugin_train.prefix import head_probs, prefix_features

from ..inference.conftest import make_context_input


def _inputs(lengths, seed=0, context=False):
    if context:
        return [make_context_input(n, seed=seed + n) for n in lengths]
    rng = np.random.default_rng(seed)
    return [
        ModelInput(rng.normal(size=(n, 32, 32)).astype(np.float32), rng.integers(1, 6, n)) for n in lengths
    ]


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("convention-small", {"channels": (4, 8, 8, 8), "head_hidden": 16, "max_chunks": 6}),
        ("cnn-gru", {"features": 16, "hidden": 8, "max_chunks": 12}),
        ("convention-triplet-small", {"channels": (4, 8, 8, 8), "head_hidden": 16, "max_chunks": 6}),
        ("convention-alert-small", {"channels": (4, 8, 8, 8), "head_hidden": 16, "max_chunks": 6}),
    ],
)
def test_prefix_features_equal_the_net_on_each_prefix_window(name, args):
    torch.manual_seed(0)
    net = create_net(name, **args).eval()
    inputs = _inputs([4, 11, 25], context=net.uses_context)
    prefixes = (3, 6, 12)
    feats = prefix_features(net, inputs, prefixes, batch_size=2)
    assert feats.shape[:2] == (3, 4)
    probs = head_probs(net.head, feats)
    cs = net.chunk_size
    with torch.inference_mode():
        for k, inp in enumerate(inputs):
            for v, p in enumerate([*prefixes, None]):
                seen = inp if p is None or p >= len(inp) else inp[: max(1, p // cs) * cs]
                tensors = batch_tensors(net, [serving_window(seen, cs, net.max_chunks)])
                expected = net(*tensors).softmax(-1).numpy()[0]
                np.testing.assert_allclose(probs[k, v], expected, atol=1e-5)


def test_history_rows_of_each_view_feed_a_retrained_history_encoder():
    from broker_plugin_train.finetune import history_parts, refresh_history
    from broker_plugin_train.prefix import prefix_history_rows

    torch.manual_seed(0)
    net = create_net("convention-alert-small", channels=(4, 8, 8, 8), head_hidden=16, max_chunks=6).eval()
    inputs = _inputs([4, 11, 25], context=True)
    prefixes = (3, 6, 12)
    feats = prefix_features(net, inputs, prefixes, batch_size=2)
    rows = prefix_history_rows(net, inputs, prefixes)
    assert rows.shape[:2] == (3, 4)
    parts = history_parts(net, rows)  # the frozen GRU's summaries, computed once
    np.testing.assert_allclose(refresh_history(net, feats, parts), feats, atol=1e-5)  # the same encoder
    with torch.no_grad():  # stage 2 moved the layers after the GRU: the views are what the net now computes
        for layer in (net.history_encoder.out, net.history_encoder.statistics):
            for p in layer.parameters():
                p.add_(0.1 * torch.randn_like(p))
    refreshed = refresh_history(net, feats, parts)
    assert not np.allclose(refreshed, feats, atol=1e-3)
    np.testing.assert_allclose(refreshed, prefix_features(net, inputs, prefixes, batch_size=2), atol=1e-5)


def test_members_sharing_a_backbone_share_one_pass_and_keep_their_own_heads():
    from ..factories import share_backbone

    args = {"channels": (4, 8, 8, 8), "head_hidden": 16, "max_chunks": 6}
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        members.append(create_net("convention-alert-small", **args).eval())
    share_backbone(members, [0, 0, 0])  # own heads and history layers, one front end and blocks
    inputs = _inputs([4, 11, 25], context=True)
    together = prefix_features(members, inputs, (3, 6, 12), batch_size=2)
    assert together.shape[:3] == (3, 3, 4)
    for member, feats in zip(members, together, strict=True):
        np.testing.assert_allclose(
            feats, prefix_features(member, inputs, (3, 6, 12), batch_size=2), atol=1e-6
        )
    assert not np.allclose(together[0], together[1], atol=1e-3)  # the heads differ
