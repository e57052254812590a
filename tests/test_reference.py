"""The eager oracle vs hand-computed values, float64 gradcheck and the NumPy transcription.

The formulas checked: docs/math.md (the loss, gradients, metrics; math_oracle.py transcribes them).
"""

import math

import math_oracle
import numpy as np
import pytest
import torch
from batches import NON_DEFAULT_WEIGHTS, make_batch, non_targets, spoil

from symmpo import SymMPOConfig, reference, symmpo_loss, symmpo_loss_from_logps


def softplus(x):  # -log sigmoid(-x) written out: log(1 + e^x)
    return math.log1p(math.exp(x))


def test_hand_computed_case():
    # B = 1, V = 2, T = 2: uniform logits give every sequence log p = -log 2 (one target each).
    logits = torch.zeros(5, 2, 2)
    labels = torch.tensor([[-100, 1]] * 5)
    r = [1.0, -1.0, 0.5, 0.2, 2.0]  # wanted rewards r_k = s_k - s_k^ref
    ref = torch.tensor([-math.log(2) - rk for rk in r])
    out = symmpo_loss(logits, labels, ref, impl="torch")

    beta = 0.1
    z_dpo, z_p1, z_p2 = beta * (1.0 + 1.0), beta * (1.0 - 0.5), beta * (2.0 - 0.2)
    mgn = (1.0 - 0.5) - (2.0 - 0.2)  # -1.3
    a1, a2 = beta * 1.0, beta * 2.0
    dpo = softplus(-z_dpo)
    pair = softplus(-z_p1) + softplus(-z_p2)
    anchor = softplus(-a1) + softplus(-a2)
    expected = dpo + 0.5 * pair + 1e-4 * mgn**2 + 1.0 * anchor

    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.dpo.item() == pytest.approx(dpo, rel=1e-6)
    assert out.pair.item() == pytest.approx(pair, rel=1e-6)
    assert out.margin.item() == pytest.approx(1.69, rel=1e-6)
    assert out.anchor.item() == pytest.approx(anchor, rel=1e-6)
    assert out.policy_logps.flatten().tolist() == pytest.approx([-math.log(2)] * 5)
    assert out.rewards.flatten().tolist() == pytest.approx([0.1, -0.1, 0.05, 0.02, 0.2], rel=1e-5)
    assert out.accuracy_dpo.item() == 1.0 and out.accuracy_pair2.item() == 1.0
    assert out.reward_margin_pair1.item() == pytest.approx(z_p1, rel=1e-5)


@pytest.mark.parametrize("average", [False, True])
def test_sequence_logps_gradcheck(average):
    logits, labels, _ = make_batch(batch=1, seq_len=4, vocab=5, dtype=torch.float64)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: reference.sequence_logps(x, labels, average), (logits,)
    )


def test_terms_gradcheck():
    config = SymMPOConfig(
        beta=0.3,
        beta_contrast=0.2,
        pair_weight=0.7,
        margin_weight=0.05,
        anchor_weight=0.6,
        delta=0.1,
    )
    policy = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(5, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda p: symmpo_loss_from_logps(p, ref, config).loss, (policy,)
    )


def test_shift_is_a_view_and_input_untouched():
    logits, labels, _ = make_batch()
    before = logits.clone()
    reference.sequence_logps(logits, labels)
    assert torch.equal(before, logits)


@pytest.mark.parametrize("average", [False, True])
def test_matches_float64_math_transcription(average):
    """Loss and logits gradient of impl='torch' in fp32 match docs/math.md in float64 to 1e-5."""
    logits, labels, ref = make_batch(batch=3, seq_len=7, vocab=13, scale=3.0, seed=1)
    logits.requires_grad_(True)
    out = symmpo_loss(
        logits, labels, ref, impl="torch", average_log_prob=average, **NON_DEFAULT_WEIGHTS
    )
    out.loss.backward()
    loss64, grad64 = math_oracle.symmpo_from_logits(
        logits.detach().numpy(), labels.numpy(), ref.numpy(), average=average, **NON_DEFAULT_WEIGHTS
    )
    assert abs(out.loss.item() - loss64) <= 1e-5 * max(1.0, abs(loss64))
    err = np.abs(logits.grad.numpy() - grad64).max()
    assert err <= 1e-5 * max(1.0, np.abs(grad64).max())
    # Zero gradient at ignored positions and at the last position.
    dead = torch.cat([labels[:, 1:] == -100, torch.ones(15, 1, dtype=torch.bool)], 1)
    assert torch.all(logits.grad[dead] == 0)


@pytest.mark.parametrize("average", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_at_non_targets_change_nothing(average, bad):
    """NaN or inf at positions that predict no target: the log-probs are those of the float64
    transcription on the finite logits, and the gradient is exactly 0 there (not NaN: a NaN
    row's softmax would be NaN, so masking after the log-softmax is not enough)."""
    logits, labels, _ = make_batch(batch=2, seq_len=7, vocab=13, dtype=torch.float64, seed=3)
    ignored = non_targets(labels)
    assert ignored[:, :-1].any()  # prompts and padding, not only the last position
    spoiled = spoil(logits, ignored, bad).requires_grad_(True)
    got = reference.sequence_logps(spoiled, labels, average)
    expected, _, _ = math_oracle.sequence_logps(logits.numpy(), labels.numpy(), average)
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    weights = torch.randn(got.shape, dtype=torch.float64)
    (got * weights).sum().backward()
    clean = logits.clone().requires_grad_(True)
    (reference.sequence_logps(clean, labels, average) * weights).sum().backward()
    assert torch.all(spoiled.grad[ignored] == 0)
    assert torch.equal(spoiled.grad, clean.grad)
