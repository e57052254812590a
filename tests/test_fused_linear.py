"""symmpo_loss_from_hidden against the float64 reference (logits = hidden @ weight.T + bias).

The math checked: docs/math.md#the-loss and docs/math.md#gradients (into the hidden states).
"""

import math

import pytest
import torch
from batches import make_labels, non_targets, spoil
from kernel_helpers import assert_error_within

from symmpo import reference, symmpo_loss, symmpo_loss_from_hidden
from symmpo.fused_linear import plan_chunks

IMPLS = ["torch", "triton"]
KW = dict(beta=0.5, beta_contrast=0.3, pair_weight=0.7, margin_weight=0.05, delta=0.1)


def make_inputs(batch=2, seq_len=7, hidden=5, vocab=33, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(5 * batch, seq_len, hidden, generator=gen, dtype=torch.float64)
    w = torch.randn(vocab, hidden, generator=gen, dtype=torch.float64) / hidden**0.5
    b = torch.randn(vocab, generator=gen, dtype=torch.float64)
    labels = make_labels(5 * batch, seq_len, vocab, gen)
    ref = -torch.rand(5 * batch, generator=gen) * 10
    return h.to(dtype), w.to(dtype), b.to(dtype), labels, ref


def reference_run(h, w, b, labels, ref, **kw):
    """Full logits and the eager loss, autograd for the gradients."""
    h, w, b = (t.detach().clone().requires_grad_(True) for t in (h, w, b))
    out = symmpo_loss(h @ w.t() + b, labels, ref.to(h.dtype), impl="torch", **kw)
    out.loss.backward()
    return out, h.grad, w.grad, b.grad


def fused_run(h, w, b, labels, ref, impl, **kw):
    h, w, b = (t.detach().clone().requires_grad_(True) for t in (h, w, b))
    out = symmpo_loss_from_hidden(h, w, labels, ref, bias=b, impl=impl, **kw)
    out.loss.backward()
    return out, h.grad, w.grad, b.grad


def assert_matches_float64(got, exact, rtol=1e-5):
    out, *grads = got
    ref_out, *ref_grads = exact
    assert abs(out.loss.item() - ref_out.loss.item()) <= rtol * max(1.0, abs(ref_out.loss.item()))
    torch.testing.assert_close(
        out.policy_logps.double(), ref_out.policy_logps.double(), rtol=rtol, atol=rtol
    )
    for g, r in zip(grads, ref_grads, strict=True):
        err = (g.double() - r).abs().max().item()
        assert err <= rtol * max(1.0, r.abs().max().item()), err


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("chunk_bytes", [1, 33 * 4 * 20, 2**30])  # per example, mid, one chunk
@pytest.mark.parametrize("average", [False, True])
def test_fp32_matches_float64(impl, chunk_bytes, average):
    h, w, b, labels, ref = make_inputs(batch=3)
    exact = reference_run(h, w, b, labels, ref, average_log_prob=average, **KW)
    kw = dict(chunk_bytes=chunk_bytes, average_log_prob=average, **KW)
    got = fused_run(h.float(), w.float(), b.float(), labels, ref, impl, **kw)
    assert_matches_float64(got, exact)


def test_chunk_plans_hold_whole_examples():
    _, _, _, labels, _ = make_inputs(batch=3)
    sizes = [int((labels[i::3, 1:] != -100).sum()) for i in range(3)]
    one = plan_chunks(labels, -100, 4, 1)
    assert [(e0, e1) for *_, e0, e1 in one.chunks] == [(0, 1), (1, 2), (2, 3)]
    assert [p1 - p0 for p0, p1, *_ in one.chunks] == sizes
    whole = plan_chunks(labels, -100, 4, 2**30)
    assert whole.chunks == [(0, sum(sizes), 0, 3)]
    for p0, p1, e0, e1 in plan_chunks(labels, -100, 4, 4 * (sizes[0] + sizes[1])).chunks:
        assert set((whole.rows[p0:p1] % 3).tolist()) <= set(range(e0, e1))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("hidden,vocab", [(1, 7), (13, 1), (3, 257)])
def test_odd_sizes_and_batch_of_one(impl, hidden, vocab):
    h, w, b, labels, ref = make_inputs(batch=1, seq_len=6, hidden=hidden, vocab=vocab, seed=4)
    exact = reference_run(h, w, b, labels, ref)
    assert_matches_float64(fused_run(h.float(), w.float(), b.float(), labels, ref, impl), exact)


@pytest.mark.parametrize("impl", IMPLS)
def test_single_target_sequence_and_zero_hidden_grad_elsewhere(impl):
    h, w, b, labels, ref = make_inputs(batch=2, seq_len=8, seed=5)
    labels[3] = -100
    labels[3, 5] = 4  # one target: position 4 predicts it
    exact = reference_run(h, w, b, labels, ref)
    got = fused_run(h.float(), w.float(), b.float(), labels, ref, impl, chunk_bytes=1)
    assert_matches_float64(got, exact)
    grad_h = got[1]
    target = torch.zeros(labels.shape, dtype=torch.bool)
    target[:, :-1] = labels[:, 1:] != -100
    assert torch.all(grad_h[~target] == 0)
    assert torch.any(grad_h[3, 4] != 0) and torch.all(grad_h[3, :4] == 0)


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_errors_within_torch(impl):
    h, w, b, labels, ref = make_inputs(batch=2, seq_len=6, hidden=16, vocab=300, seed=6)
    exact = reference_run(h, w, b, labels, ref)
    low = [t.to(torch.bfloat16) for t in (h, w, b)]
    eager = reference_run(*low, labels, ref)
    got = fused_run(*low, labels, ref, impl, chunk_bytes=1)
    assert_error_within(
        got[0].loss.detach(), eager[0].loss.detach(), exact[0].loss.detach(), eps_scale=1e-3
    )
    for g, e, x in zip(got[1:], eager[1:], exact[1:], strict=True):
        assert g.dtype == torch.bfloat16
        assert_error_within(g, e, x, eps_scale=2.0**-7, slack=1.5)


@pytest.mark.parametrize("impl", IMPLS)
def test_ref_hidden_is_scored_without_gradient(impl):
    h, w, b, labels, _ = make_inputs(batch=2, dtype=torch.float32, seed=7)
    ref_h = (h + 0.3 * torch.randn_like(h)).requires_grad_(True)
    ref_w = w + 0.1
    out = symmpo_loss_from_hidden(
        h, w, labels, ref_hidden=ref_h, ref_weight=ref_w, ref_bias=b, impl=impl, chunk_bytes=100
    )
    expected = reference.sequence_logps(ref_h.detach() @ ref_w.t() + b, labels)
    torch.testing.assert_close(out.ref_logps.flatten(), expected, rtol=1e-5, atol=1e-5)
    assert ref_h.grad is None
    # ref_weight defaults to weight and ref_bias to bias: every r_k = 0, so each -log sigmoid
    # is log 2: dpo + 0.5 * pair (2 log 2) + anchor (2 log 2) = 4 log 2.
    same = symmpo_loss_from_hidden(h, w, labels, ref_hidden=h, bias=b, impl=impl)
    assert same.loss.item() == pytest.approx(4 * math.log(2), rel=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_frozen_weight_no_grad_and_upstream_scale(impl):
    h, w, b, labels, ref = make_inputs(batch=2, dtype=torch.float32, seed=8)
    hh = h.clone().requires_grad_(True)
    (2.5 * symmpo_loss_from_hidden(hh, w, labels, ref, impl=impl).loss).backward()
    h2 = h.clone().requires_grad_(True)
    (2.5 * symmpo_loss(h2 @ w.t(), labels, ref, impl="torch").loss).backward()
    torch.testing.assert_close(hh.grad, h2.grad, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        out = symmpo_loss_from_hidden(hh, w, labels, ref, impl=impl)
    assert not out.loss.requires_grad
    four_d = symmpo_loss_from_hidden(h.view(5, 2, *h.shape[1:]), w, labels.view(5, 2, -1), ref)
    assert four_d.loss.item() == pytest.approx(out.loss.item(), rel=1e-6)


def test_bad_inputs():
    h, w, b, labels, ref = make_inputs(batch=1, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"weight must have shape \(V, H\) with H = 5.*\(33, 4\)"):
        symmpo_loss_from_hidden(h, w[:, :4], labels, ref)
    with pytest.raises(TypeError, match=r"weight has dtype torch.float64 but the hidden states"):
        symmpo_loss_from_hidden(h, w.double(), labels, ref)
    with pytest.raises(ValueError, match=r"bias must have shape \(33,\), got \(32,\)"):
        symmpo_loss_from_hidden(h, w, labels, ref, bias=b[:32])
    with pytest.raises(ValueError, match=r"hidden has 4 rows"):
        symmpo_loss_from_hidden(h[:4], w, labels[:4], ref[:4])
    with pytest.raises(ValueError, match=r"labels of shape \(5, 6\) do not match"):
        symmpo_loss_from_hidden(h, w, labels[:, :6], ref)
    bad = labels.clone()
    bad[2, 3] = 33
    with pytest.raises(ValueError, match=r"labels\[2, 3\] = 33 is outside \[0, 33\)"):
        symmpo_loss_from_hidden(h, w, bad, ref)
    with pytest.raises(ValueError, match=r"exactly one reference"):
        symmpo_loss_from_hidden(h, w, labels)
    with pytest.raises(ValueError, match=r"ref_hidden of shape \(5, 6, 5\) must match"):
        symmpo_loss_from_hidden(h, w, labels, ref_hidden=h[:, :6])
    with pytest.raises(ValueError, match=r"chunk_bytes must be a positive int, got 0"):
        symmpo_loss_from_hidden(h, w, labels, ref, chunk_bytes=0)
    with pytest.raises(TypeError, match=r"labels must be an integer tensor"):
        symmpo_loss_from_hidden(h, w, labels.float(), ref)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("average", [False, True])
def test_sequence_logps_from_hidden(impl, average):
    from symmpo import sequence_logps_from_hidden

    h, w, b, labels, _ = make_inputs(batch=1, seq_len=6, seed=9)
    h3, w3, b3 = (t.float().requires_grad_(True) for t in (h[:3], w, b))
    got = sequence_logps_from_hidden(h3, w3, labels[:3], bias=b3, average=average, impl=impl)
    weights = torch.tensor([0.5, -1.0, 2.0])
    (got * weights).sum().backward()
    x = [t.clone().requires_grad_(True) for t in (h[:3], w, b)]
    exact = reference.sequence_logps(x[0] @ x[1].t() + x[2], labels[:3], average)
    (exact * weights.double()).sum().backward()
    torch.testing.assert_close(got.double(), exact.detach(), rtol=1e-5, atol=1e-5)
    for g, e in zip((h3.grad, w3.grad, b3.grad), (x[0].grad, x[1].grad, x[2].grad), strict=True):
        torch.testing.assert_close(g.double(), e, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        chunked = sequence_logps_from_hidden(
            h3, w3, labels[:3], bias=b3, average=average, impl=impl, chunk_bytes=1
        )
    torch.testing.assert_close(chunked, got.detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_autocast_with_float32_weights(impl):
    """Mixed precision: fp32 hidden and weights under bf16 autocast (the trainer on CUDA)."""
    h, w, b, labels, ref = make_inputs(batch=2, seq_len=6, hidden=16, vocab=64, seed=12)
    exact = reference_run(h, w, b, labels, ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fused_run(h.float(), w.float(), b.float(), labels, ref, impl, chunk_bytes=1)
    assert got[1].dtype == got[2].dtype == torch.float32
    assert abs(got[0].loss.item() - exact[0].loss.item()) < 2e-2 * abs(exact[0].loss.item())
    for g, e in zip(got[1:], exact[1:], strict=True):
        assert (g.double() - e).norm() / e.norm() < 3e-2


@pytest.mark.parametrize("impl", IMPLS)
def test_non_finite_hidden_at_non_targets_is_ignored(impl):
    """NaN in the hidden states (policy and reference) where no target is predicted: logits
    are computed at target positions only, so values and gradients are those of the finite
    batch, with exact zeros there."""
    from symmpo import sequence_logps_from_hidden

    h, w, b, labels, _ = make_inputs(batch=2, seq_len=7, dtype=torch.float32, seed=13)
    ignored = non_targets(labels)
    ref_h = h + 0.1
    spoiled, spoiled_ref = (spoil(t, ignored, float("nan")) for t in (h, ref_h))
    runs = []
    for x, r in ((h, ref_h), (spoiled, spoiled_ref)):
        x = x.clone().requires_grad_(True)
        out = symmpo_loss_from_hidden(x, w, labels, bias=b, ref_hidden=r, impl=impl, **KW)
        logps = sequence_logps_from_hidden(x, w, labels, bias=b, impl=impl)
        (out.loss + logps.sum()).backward()
        runs.append((out, logps, x.grad))
    (clean, clean_logps, clean_grad), (got, logps, grad) = runs
    assert torch.isfinite(got.loss)
    torch.testing.assert_close(got.loss, clean.loss, rtol=0, atol=0)
    torch.testing.assert_close(got.ref_logps, clean.ref_logps, rtol=0, atol=0)
    torch.testing.assert_close(logps, clean_logps, rtol=0, atol=0)
    assert torch.all(grad[ignored] == 0)
    torch.testing.assert_close(grad, clean_grad, rtol=0, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("given", [False, True])
def test_non_finite_reference_raises_where_the_caller_looks(impl, given):
    """A non-finite reference log-prob, given or scored from ref_hidden at a target, makes the
    outputs and the target rows' gradient NaN without a sync at the call; out.metrics() and
    out.raise_if_invalid() raise naming it, and immediate_checks raises at the call."""
    h, w, b, labels, ref = make_inputs(batch=2, seq_len=7, dtype=torch.float32, seed=14)
    if given:
        ref[6] = float("inf")
        kw = dict(ref_logps=ref)
        message = r"ref_logps holds non-finite values .*row 6 \(chosen_on_contrast of"
    else:
        ref_h = h.clone()
        ref_h[6, int((labels[6, 1:] != -100).nonzero()[0]), 1] = float("nan")
        kw = dict(ref_hidden=ref_h)
        message = r"ref_hidden give a non-finite reference log-prob .*row 6 \(chosen_on_contrast of"
    with pytest.raises(ValueError, match=message):
        symmpo_loss_from_hidden(h, w, labels, bias=b, impl=impl, immediate_checks=True, **kw)
    for grad in (False, True):
        x = h.clone().requires_grad_(grad)
        out = symmpo_loss_from_hidden(x, w, labels, bias=b, impl=impl, **kw)
        assert torch.isnan(out.loss) and torch.isnan(out.per_example_loss).all()
        if grad:
            out.loss.backward()
            target = torch.zeros(labels.shape, dtype=torch.bool)
            target[:, :-1] = labels[:, 1:] != -100
            assert torch.isnan(x.grad[target]).all() and torch.all(x.grad[~target] == 0)
        with pytest.raises(ValueError, match=message):
            out.raise_if_invalid()
        with pytest.raises(ValueError, match=message):
            out.metrics()


@pytest.mark.parametrize("impl", IMPLS)
def test_upstream_scale_in_backward_and_a_second_backward_is_refused(impl):
    """Backward scales the gradients computed in the forward by grad_output, in place (no
    check of grad_output == 1, which would be a host sync); a retained graph cannot hand the
    scaled gradients back twice."""
    h, w, b, labels, ref = make_inputs(batch=2, seq_len=7, dtype=torch.float32, seed=15)
    grads = []
    for scale in (1.0, -3.0, 0.0):
        x, wx, bx = (t.clone().requires_grad_(True) for t in (h, w, b))
        out = symmpo_loss_from_hidden(x, wx, labels, ref, bias=bx, impl=impl)
        (scale * out.loss).backward(retain_graph=True)
        grads.append((x.grad, wx.grad, bx.grad))
        assert out.metrics()["loss"] == pytest.approx(out.loss.item())  # finite: no error
    for g1, g3, g0 in zip(*grads, strict=True):
        torch.testing.assert_close(g3, -3.0 * g1)
        assert torch.all(g0 == 0)
    with pytest.raises(RuntimeError, match="a second backward through the same graph"):
        out.loss.backward()
    x = h.clone().requires_grad_(True)  # a second backward for another input: refused too
    loss = symmpo_loss_from_hidden(x, w.clone().requires_grad_(True), labels, ref).loss
    torch.autograd.grad(loss, x, retain_graph=True)
    with pytest.raises(RuntimeError, match="a second backward through the same graph"):
        torch.autograd.grad(loss, x)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_upstream_scale_is_applied_in_float32(impl, dtype):
    """A loss scale like GradScaler's 2^16 (beyond float16's range) and a scale of 1/3 (not a
    bfloat16 number) multiply the gradients in float32, as autograd through the logits does:
    the result is the unscaled gradient times the scale, rounded once."""
    h, w, b, labels, ref = make_inputs(batch=2, seq_len=7, dtype=torch.float32, seed=17)
    h, w = h.to(dtype), w.to(dtype)
    grads = {}
    for scale in (1.0, 2.0**16, 1 / 3):
        x, wx = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
        (scale * symmpo_loss_from_hidden(x, wx, labels, ref, impl=impl).loss).backward()
        grads[scale] = (x.grad, wx.grad)
    for scale in (2.0**16, 1 / 3):
        for got, unit in zip(grads[scale], grads[1.0], strict=True):
            assert torch.isfinite(got).all()
            assert torch.equal(got, (unit.float() * scale).to(dtype))


@pytest.mark.parametrize("impl", IMPLS)
def test_labels_on_the_host_give_the_same_result(impl):
    """Labels may stay on the host (the CPU) while the hidden states are elsewhere; here both
    are on the CPU, so this checks the planning path on a labels view that is not contiguous
    and the (5, B, T) layout: the same loss and gradients as contiguous labels."""
    h, w, b, labels, ref = make_inputs(batch=2, seq_len=7, dtype=torch.float32, seed=16)
    wide = torch.full((labels.shape[0], 2 * labels.shape[1]), -100, dtype=torch.long)
    wide[:, ::2] = labels
    strided = wide[:, ::2].view(5, 2, -1)
    assert not strided.is_contiguous()
    a = fused_run(h, w, b, labels, ref, impl)
    c = fused_run(h, w, b, strided, ref, impl)
    assert a[0].loss.item() == c[0].loss.item()
    for ga, gc in zip(a[1:], c[1:], strict=True):
        assert torch.equal(ga, gc)
