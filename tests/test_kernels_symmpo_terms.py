"""The terms kernel and the fused logits -> loss path (Triton interpreter) against references.

The formulas checked: docs/math.md#the-loss, docs/math.md#gradients, docs/math.md#metrics.
"""

import math_oracle
import numpy as np
import pytest
import torch
from batches import NON_DEFAULT_WEIGHTS, make_batch, weights_of
from kernel_helpers import assert_error_within, poisoned_allocations

from symmpo import SymMPOConfig, reference, symmpo_loss
from symmpo_kernels import symmpo_terms_forward, terms_and_summary

CONFIGS = [
    SymMPOConfig(),
    SymMPOConfig(**NON_DEFAULT_WEIGHTS),
    SymMPOConfig(pair_weight=0.0, margin_weight=0.0, anchor_weight=0.0),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("batch", [1, 3, 37])
def test_terms_kernel_matches_float64(monkeypatch, config, batch):
    policy = torch.randn(5, batch, dtype=torch.float64) * 20
    ref = torch.randn(5, batch, dtype=torch.float64) * 20
    policy[:, 0] = torch.tensor([400.0, -400.0, 300.0, -300.0, 500.0], dtype=torch.float64)
    with poisoned_allocations(monkeypatch):
        loss, terms, z, grad = symmpo_terms_forward(
            policy.float(), ref.float(), config.kernel_weights
        )
    p = policy.float().double().requires_grad_(True)  # the float32 inputs, exactly
    exact = reference.symmpo_terms(p, ref.float().double(), config)
    exact.loss.mean().backward()
    torch.testing.assert_close(loss.double(), exact.loss.detach(), rtol=1e-5, atol=1e-5)
    expected_terms = torch.stack([exact.dpo, exact.pair, exact.margin, exact.anchor]).detach()
    torch.testing.assert_close(terms.double(), expected_terms, rtol=1e-5, atol=1e-5)
    expected_z = torch.stack([exact.z_dpo, exact.z_p1, exact.z_p2]).detach()
    torch.testing.assert_close(z.double(), expected_z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), p.grad, rtol=1e-5, atol=1e-7)
    _, g_math = math_oracle.symmpo(
        p.detach().numpy(),
        ref.float().double().numpy(),
        **weights_of(config),
    )
    np.testing.assert_allclose(grad.double().numpy(), g_math, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("average", [False, True])
@pytest.mark.parametrize("config", CONFIGS[:2])
def test_fused_loss_matches_math_fp32(monkeypatch, average, config):
    logits, labels, ref = make_batch(batch=2, seq_len=6, vocab=300, scale=3.0, seed=3)
    x = logits.clone().requires_grad_(True)
    with poisoned_allocations(monkeypatch):
        out = symmpo_loss(x, labels, ref, config=config, impl="triton", average_log_prob=average)
        out.loss.backward()
    weights = weights_of(config)
    loss64, grad64 = math_oracle.symmpo_from_logits(
        logits.numpy(), labels.numpy(), ref.numpy(), average=average, **weights
    )
    assert abs(out.loss.item() - loss64) <= 1e-5 * max(1.0, abs(loss64))
    np.testing.assert_allclose(x.grad.double().numpy(), grad64, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("average,allow_empty", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("config", CONFIGS[:2])
def test_fused_outputs_equal_torch_path(monkeypatch, config, average, allow_empty):
    """Every field of the output (the kernel's batch means, rewards, log-probs) matches the
    eager path's."""
    logits, labels, ref = make_batch(batch=4, seq_len=5, vocab=40, seed=5)
    if allow_empty:
        labels[6, 1:] = -100
    kw = dict(config=config, average_log_prob=average, allow_empty=allow_empty)
    with poisoned_allocations(monkeypatch):
        a = symmpo_loss(logits, labels, ref, impl="triton", **kw)
    b = symmpo_loss(logits, labels, ref, impl="torch", **kw)
    for name, value in b.metrics().items():
        assert a.metrics()[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    for field in ("per_example_loss", "policy_logps", "ref_logps", "rewards"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), msg=field)


def _means_float64(policy, ref, config):
    """The batch means of the summary vector, from the eager terms in float64."""
    p, r = policy.double(), ref.double()
    t = reference.symmpo_terms(p, r, config)
    z = torch.stack([t.z_dpo, t.z_p1, t.z_p2])
    rewards = reference.symmpo_rewards(p, r, config)
    term_means = torch.stack([t.dpo, t.pair, t.margin, t.anchor]).mean(-1)
    accuracies = (z > 0).double().mean(-1)
    return torch.cat([t.loss.mean()[None], term_means, accuracies, z.mean(-1), rewards.mean(-1)])


@pytest.mark.parametrize("batch,average", [(3, False), (1100, True)])  # 1100: two blocks
def test_terms_summary_matches_float64(monkeypatch, batch, average):
    gen = torch.Generator().manual_seed(batch)
    sums = -torch.rand(5, batch, generator=gen) * 300
    counts = torch.randint(1, 40, (5, batch), generator=gen, dtype=torch.int32)
    ref = -torch.rand(5, batch, generator=gen) * 300
    config = SymMPOConfig(**NON_DEFAULT_WEIGHTS)
    with poisoned_allocations(monkeypatch):
        result = terms_and_summary(sums, ref, config.kernel_weights, counts=counts, average=average)
    policy = sums / counts if average else sums
    torch.testing.assert_close(result.policy, policy)
    expected = _means_float64(policy, ref, config)
    torch.testing.assert_close(result.summary.double(), expected, rtol=1e-5, atol=1e-5)
    assert result.mean_loss.item() == result.summary[0].item()
    torch.testing.assert_close(
        result.rewards.double(),
        reference.symmpo_rewards(policy.double(), ref.double(), config),
        rtol=1e-5,
        atol=1e-5,
    )
    assert result.flags[1:].tolist() == [0, 0]


def test_terms_flags_count_empty_sequences_and_bad_references():
    counts = torch.tensor([[3, 0, 2], [1, 1, 1], [0, 0, 4], [2, 2, 2], [5, 5, 5]]).int()
    ref = -torch.ones(5, 3)
    ref[2, 1], ref[4, 0], ref[0, 2] = float("nan"), float("-inf"), float("inf")
    flags = torch.zeros(3, dtype=torch.int32)
    weights = SymMPOConfig().kernel_weights
    terms_and_summary(-torch.ones(5, 3), ref, weights, counts=counts, flags=flags)
    assert flags.tolist() == [0, 3, 3]  # element 0 belongs to the log-prob kernel


def test_fused_bf16_errors_within_torch():
    logits, labels, ref = make_batch(batch=2, seq_len=6, vocab=257, dtype=torch.bfloat16, seed=7)
    grads = {}
    losses = {}
    for name, x, impl in (
        ("kernel", logits, "triton"),
        ("torch", logits, "torch"),
        ("exact", logits.double(), "torch"),
    ):
        x = x.clone().requires_grad_(True)
        out = symmpo_loss(x, labels, ref.double() if name == "exact" else ref, impl=impl)
        out.loss.backward()
        grads[name], losses[name] = x.grad, out.loss.detach()
    assert grads["kernel"].dtype == torch.bfloat16
    assert_error_within(losses["kernel"], losses["torch"], losses["exact"], eps_scale=1e-6)
    assert_error_within(grads["kernel"], grads["torch"], grads["exact"])


def test_ref_logits_and_inplace_grad():
    logits, labels, ref = make_batch(batch=2, seq_len=5, vocab=31, seed=9)
    ref_logits = logits + 0.5 * torch.randn_like(logits)
    a = logits.clone().requires_grad_(True)
    out = symmpo_loss(a, labels, ref_logits=ref_logits, impl="triton")
    out.loss.backward()
    torch.testing.assert_close(
        out.ref_logps.flatten(), reference.sequence_logps(ref_logits, labels)
    )

    # In-place: the gradient lands in the logits buffer itself.
    leaf = logits.clone().requires_grad_(True)
    buffer = leaf * 1.0  # an intermediate, as lm_head's output would be
    captured = {}
    buffer.register_hook(lambda g: captured.setdefault("grad", g))
    symmpo_loss(
        buffer, labels, ref_logits=ref_logits, impl="triton", inplace_grad=True
    ).loss.backward()
    assert captured["grad"].data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(leaf.grad, a.grad)


@pytest.mark.parametrize("average", [False, True])
def test_upstream_gradient_scales(average):
    logits, labels, ref = make_batch(batch=2, seq_len=5, vocab=17, seed=11)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    kw = dict(average_log_prob=average)
    (3.0 * symmpo_loss(a, labels, ref, impl="triton", **kw).loss).backward()
    (3.0 * symmpo_loss(b, labels, ref, impl="torch", **kw).loss).backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_huge_logits_give_finite_loss_and_grad():
    logits, labels, ref = make_batch(batch=1, seq_len=6, vocab=64, scale=1e4, seed=13)
    x = logits.clone().requires_grad_(True)
    out = symmpo_loss(x, labels, ref, impl="triton")
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(x.grad).all()


def test_allow_empty_under_triton():
    logits, labels, ref = make_batch(batch=1, seq_len=6, vocab=19, seed=15)
    labels[1, 1:] = -100
    x = logits.clone().requires_grad_(True)
    out = symmpo_loss(x, labels, ref, impl="triton", allow_empty=True)
    out.loss.backward()
    assert out.policy_logps.flatten()[1].item() == 0.0
    assert torch.all(x.grad[1] == 0)
    expected = symmpo_loss(logits, labels, ref, impl="torch", allow_empty=True)
    assert out.loss.item() == pytest.approx(expected.loss.item(), rel=1e-6)


def test_second_backward_after_inplace_grad_is_refused():
    logits, labels, ref = make_batch(batch=1, seq_len=5, vocab=17, seed=21)
    leaf = logits.clone().requires_grad_(True)
    out = symmpo_loss(leaf * 1.0, labels, ref, impl="triton", inplace_grad=True)
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace_grad=True"):
        out.loss.backward()
    # Without inplace_grad a second backward is fine and gives the same gradient again.
    x = logits.clone().requires_grad_(True)
    loss = symmpo_loss(x, labels, ref, impl="triton").loss
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * first)
