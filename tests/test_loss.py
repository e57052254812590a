"""Public API behaviour and the properties of the objective (hypothesis).

The objective and its defaults: docs/math.md (the loss, defaults, baselines, metrics).
"""

import math
import os
import subprocess
import sys

import pytest
import torch
from batches import NON_DEFAULT_WEIGHTS, make_batch, non_targets, spoil
from hypothesis import given, settings
from hypothesis import strategies as st

from symmpo import (
    SymMPOConfig,
    dpo_loss,
    mdpo_loss,
    reference,
    sequence_logps,
    symmpo_loss,
    symmpo_loss_from_logps,
)

finite = st.floats(-50, 50, allow_nan=False, allow_infinity=False)
positive = st.floats(0.01, 2.0)
weight = st.floats(0.0, 2.0)


def logps_strategy(batch):
    return st.lists(finite, min_size=5 * batch, max_size=5 * batch).map(
        lambda v: torch.tensor(v, dtype=torch.float64).view(5, batch)
    )


@settings(max_examples=50, deadline=None)
@given(logps_strategy(3), logps_strategy(3), positive, weight, weight, weight, finite)
def test_symmetric_terms_invariant_under_swap(policy, ref, beta, pw, mw, aw, delta):
    """With beta_contrast = beta, pair/margin/anchor do not change when 0 <-> 4 and 2 <-> 3 swap."""
    config = SymMPOConfig(
        beta=beta, pair_weight=pw, margin_weight=mw, anchor_weight=aw, delta=delta / 10
    )
    perm = [4, 1, 3, 2, 0]
    a = reference.symmpo_terms(policy, ref, config)
    b = reference.symmpo_terms(policy[perm], ref[perm], config)
    for name in ("pair", "margin", "anchor"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-12, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(logps_strategy(2), logps_strategy(2), positive)
def test_zero_weights_reduce_to_textbook_dpo(policy, ref, beta):
    out = symmpo_loss_from_logps(
        policy, ref, beta=beta, pair_weight=0.0, margin_weight=0.0, anchor_weight=0.0
    )
    expected = 0.0
    for i in range(2):
        z = beta * ((policy[0, i] - ref[0, i]) - (policy[1, i] - ref[1, i])).item()
        expected += math.log1p(math.exp(-z)) if z > -30 else -z  # -log sigmoid(z)
    assert out.loss.item() == pytest.approx(expected / 2, rel=1e-9, abs=1e-12)
    assert dpo_loss(policy[:2], ref[:2], beta=beta).loss.item() == pytest.approx(
        expected / 2, rel=1e-9, abs=1e-12
    )


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(-1e3, 1e3))
def test_constant_per_position_changes_nothing(seed, shift_scale):
    logits, labels, ref = make_batch(
        batch=1, seq_len=5, vocab=7, dtype=torch.float64, seed=seed % 1000
    )
    shift = shift_scale * torch.rand(logits.shape[:2] + (1,), dtype=torch.float64)
    a = symmpo_loss(logits, labels, ref, impl="torch")
    b = symmpo_loss(logits + shift, labels, ref, impl="torch")
    assert b.loss.item() == pytest.approx(a.loss.item(), rel=1e-9, abs=1e-9)
    torch.testing.assert_close(b.policy_logps, a.policy_logps, rtol=1e-9, atol=1e-7)


@settings(max_examples=50, deadline=None)
@given(logps_strategy(2), logps_strategy(2), st.integers(0, 9), finite)
def test_same_constant_on_policy_and_reference_changes_nothing(policy, ref, row, c):
    bumped_policy, bumped_ref = policy.clone().view(-1), ref.clone().view(-1)
    bumped_policy[row] += c
    bumped_ref[row] += c
    a = symmpo_loss_from_logps(policy, ref)
    b = symmpo_loss_from_logps(bumped_policy, bumped_ref)
    assert b.loss.item() == pytest.approx(a.loss.item(), rel=1e-9, abs=1e-12)


def test_finite_inputs_never_give_non_finite_loss():
    policy = torch.tensor([1e4, -1e4, 1e4, -1e4, -1e4]).view(5, 1)
    ref = torch.zeros(5, 1)
    out = symmpo_loss_from_logps(policy, ref, beta=5.0)
    assert torch.isfinite(out.loss)
    policy.requires_grad_(True)
    symmpo_loss_from_logps(policy, ref, beta=5.0).loss.backward()
    assert torch.isfinite(policy.grad).all()


def test_shapes_and_layouts_agree():
    logits, labels, ref = make_batch(batch=2)
    a = symmpo_loss(logits, labels, ref, impl="torch")
    b = symmpo_loss(logits.view(5, 2, *logits.shape[1:]), labels.view(5, 2, -1), ref.view(5, 2))
    assert a.loss.item() == b.loss.item()
    assert a.policy_logps.shape == (5, 2) and a.rewards.shape == (5, 2)
    assert a.per_example_loss.shape == (2,)
    assert not a.policy_logps.requires_grad and not a.dpo.requires_grad
    metrics = a.metrics(prefix="train/")
    assert metrics["train/loss"] == pytest.approx(a.loss.item())
    assert set(metrics) >= {"train/accuracy_pair2", "train/reward_4"}


def test_ref_logits_scored_without_gradient():
    logits, labels, _ = make_batch(batch=2)
    ref_logits = (logits + 0.3 * torch.randn_like(logits)).requires_grad_(True)
    out = symmpo_loss(logits, labels, ref_logits=ref_logits)
    expected_ref = reference.sequence_logps(ref_logits.detach(), labels)
    torch.testing.assert_close(out.ref_logps.flatten(), expected_ref)
    assert ref_logits.grad is None and not out.ref_logps.requires_grad


def test_bf16_logits_accumulate_in_float32():
    logits, labels, ref = make_batch(batch=2, dtype=torch.bfloat16)
    out = symmpo_loss(logits, labels, ref)
    assert out.policy_logps.dtype == torch.float32
    expected = reference.sequence_logps(logits.float(), labels)
    torch.testing.assert_close(out.policy_logps.flatten(), expected)


def test_config_and_overrides():
    logits, labels, ref = make_batch(batch=2)
    config = SymMPOConfig(beta=0.2, pair_weight=1.0)
    a = symmpo_loss(logits, labels, ref, config=config, delta=0.5)
    b = symmpo_loss(logits, labels, ref, config=SymMPOConfig(beta=0.2, pair_weight=1.0, delta=0.5))
    c = symmpo_loss(logits, labels, ref)
    assert a.loss.item() == b.loss.item() != c.loss.item()
    assert config.delta == 0.0  # overrides never mutate the caller's config
    assert (
        SymMPOConfig().contrast_beta == 0.1 and SymMPOConfig(beta_contrast=0.3).contrast_beta == 0.3
    )


def test_average_log_prob_divides_by_target_count():
    logits, labels, ref = make_batch(batch=2)
    total = symmpo_loss(logits, labels, ref).policy_logps.flatten()
    mean = symmpo_loss(logits, labels, ref, average_log_prob=True).policy_logps.flatten()
    counts = (labels[:, 1:] != -100).sum(-1).float()
    torch.testing.assert_close(mean, total / counts)


def test_allow_empty_scores_zero():
    logits, labels, ref = make_batch(batch=2)
    labels[3, 1:] = -100
    out = symmpo_loss(logits, labels, ref, allow_empty=True)
    assert out.policy_logps.flatten()[3].item() == 0.0
    avg = symmpo_loss(logits, labels, ref, allow_empty=True, average_log_prob=True)
    assert avg.policy_logps.flatten()[3].item() == 0.0


def test_public_sequence_logps_any_row_count():
    logits, labels, _ = make_batch(batch=1)
    out = sequence_logps(logits[:3], labels[:3], impl="torch")
    torch.testing.assert_close(out, reference.sequence_logps(logits[:3], labels[:3]))


def test_mdpo_matches_formula():
    policy = torch.randn(3, 4, dtype=torch.float64)
    ref = torch.randn(3, 4, dtype=torch.float64)
    out = mdpo_loss(policy, ref, beta=0.2)
    r = policy - ref
    nls = lambda z: torch.log1p(torch.exp(-z))  # noqa: E731
    expected = (nls(0.2 * (r[0] - r[1])) + nls(0.2 * (r[0] - r[2])) + nls(0.2 * r[0])).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert set(out.terms) == {"dpo", "cond", "anchor"}


def test_triton_without_cuda_or_interpreter_says_so():
    code = (
        "import torch; from symmpo import symmpo_loss\n"
        "logits = torch.randn(5, 3, 4); labels = torch.tensor([[-100, 1, 2]] * 5)\n"
        "try:\n"
        "    symmpo_loss(logits, labels, torch.zeros(5), impl='triton')\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "need a CUDA tensor, or TRITON_INTERPRET=1" in out.stdout, out.stderr


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_at_non_targets_are_ignored(impl, dtype, bad):
    """NaN or inf where no target is predicted (prompt, padding, the last position), in the
    policy and the reference logits: the loss, the metrics and the gradient are those of the
    same batch with finite values there, and the gradient there is exactly 0."""
    logits, labels, _ = make_batch(batch=2, seq_len=7, dtype=dtype, seed=4)
    ref_logits = (logits.float() + 0.5 * torch.randn(logits.shape)).to(dtype)
    ignored = non_targets(labels)
    runs = []
    for x, r in (
        (logits, ref_logits),
        (spoil(logits, ignored, bad), spoil(ref_logits, ignored, bad)),
    ):
        x = x.clone().requires_grad_(True)
        out = symmpo_loss(x, labels, ref_logits=r, impl=impl, **NON_DEFAULT_WEIGHTS)
        out.loss.backward()
        runs.append((out, x.grad))
    (clean, clean_grad), (got, grad) = runs
    exact = dict(rtol=0, atol=0) if impl == "torch" else {}
    assert torch.isfinite(got.loss)
    torch.testing.assert_close(got.loss, clean.loss, **exact)
    torch.testing.assert_close(got.policy_logps, clean.policy_logps, **exact)
    torch.testing.assert_close(got.ref_logps, clean.ref_logps, **exact)
    torch.testing.assert_close(got.per_example_loss, clean.per_example_loss, **exact)
    assert torch.all(grad[ignored] == 0)
    torch.testing.assert_close(grad, clean_grad, **exact)


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("average", [False, True])
def test_sequence_logps_ignores_non_finite_non_targets(impl, average):
    logits, labels, _ = make_batch(batch=1, seq_len=7, seed=5)
    ignored = non_targets(labels)
    x = spoil(logits, ignored, float("nan")).requires_grad_(True)
    got = sequence_logps(x, labels, average=average, impl=impl)
    clean = logits.clone().requires_grad_(True)
    expected = sequence_logps(clean, labels, average=average, impl=impl)
    exact = dict(rtol=0, atol=0) if impl == "torch" else {}
    torch.testing.assert_close(got, expected, **exact)
    got.sum().backward()
    expected.sum().backward()
    assert torch.all(x.grad[ignored] == 0)
    torch.testing.assert_close(x.grad, clean.grad, **exact)
