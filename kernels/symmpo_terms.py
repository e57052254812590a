"""The SymMPO terms and their gradients in one launch, and the fused logits -> loss autograd path.

From (5, B) policy log-probs s_k and reference log-probs s_k^ref (r_k = s_k - s_k^ref), per
example (../shared/SPEC.md, "The loss" and "Gradients"):

    z_dpo = beta (r0 - r1)   z_p1 = beta (r0 - r2)   z_p2 = beta (r4 - r3)
    mgn = (r0 - r2) - (r4 - r3)   a1 = beta r0 - delta   a2 = beta_c r4 - delta
    loss = -ls(z_dpo) + pw (-ls(z_p1) - ls(z_p2)) + mw mgn^2 + aw (-ls(a1) - ls(a2))

with ls = log sigmoid,
and dL/ds_k of the batch mean (the 1/B included). Reads 40 B bytes, writes 4*(1+4+3+5) B bytes:
the launch is tiny, and it replaces an autograd graph of some thirty small ops.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .launch import check_launchable, guard_inplace_backward
from .logprobs import logprobs_backward, logprobs_forward

NUM_KINDS = 5


@triton.jit
def _log_sigmoid(z):
    """log sigmoid(z) = min(z, 0) - log(1 + exp(-|z|)): finite for every finite z."""
    return tl.minimum(z, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(z)))


@triton.jit
def _symmpo_terms_fwd_kernel(
    policy_ptr,
    ref_ptr,
    loss_ptr,
    terms_ptr,
    z_ptr,
    grad_ptr,
    batch,
    beta,
    beta_contrast,
    pair_weight,
    margin_weight,
    anchor_weight,
    delta,
    grad_scale,
    BLOCK_B: tl.constexpr,
):
    """Examples [pid*BLOCK_B, (pid+1)*BLOCK_B). Inputs (5, B) float32 contiguous.

    Writes loss (B,), terms (4, B) = (dpo, pair, margin, anchor), z (3, B) = (z_dpo, z_p1,
    z_p2) and grad (5, B) = grad_scale * dL_i/ds_k.
    """
    offs = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask = offs < batch
    r0 = tl.load(policy_ptr + offs, mask=mask, other=0.0) - tl.load(
        ref_ptr + offs, mask=mask, other=0.0
    )
    r1 = tl.load(policy_ptr + batch + offs, mask=mask, other=0.0) - tl.load(
        ref_ptr + batch + offs, mask=mask, other=0.0
    )
    r2 = tl.load(policy_ptr + 2 * batch + offs, mask=mask, other=0.0) - tl.load(
        ref_ptr + 2 * batch + offs, mask=mask, other=0.0
    )
    r3 = tl.load(policy_ptr + 3 * batch + offs, mask=mask, other=0.0) - tl.load(
        ref_ptr + 3 * batch + offs, mask=mask, other=0.0
    )
    r4 = tl.load(policy_ptr + 4 * batch + offs, mask=mask, other=0.0) - tl.load(
        ref_ptr + 4 * batch + offs, mask=mask, other=0.0
    )
    z_dpo = beta * (r0 - r1)
    z_p1 = beta * (r0 - r2)
    z_p2 = beta * (r4 - r3)
    mgn = (r0 - r2) - (r4 - r3)
    a1 = beta * r0 - delta
    a2 = beta_contrast * r4 - delta

    dpo = -_log_sigmoid(z_dpo)
    pair = -_log_sigmoid(z_p1) - _log_sigmoid(z_p2)
    margin = mgn * mgn
    anchor = -_log_sigmoid(a1) - _log_sigmoid(a2)
    loss = dpo + pair_weight * pair + margin_weight * margin + anchor_weight * anchor

    # sigmoid(-z) = exp(log sigmoid(-z)): the d/dz of -log sigmoid(z), up to sign.
    s_dpo = tl.exp(_log_sigmoid(-z_dpo))
    s_p1 = tl.exp(_log_sigmoid(-z_p1))
    s_p2 = tl.exp(_log_sigmoid(-z_p2))
    s_a1 = tl.exp(_log_sigmoid(-a1))
    s_a2 = tl.exp(_log_sigmoid(-a2))
    two_mw_mgn = 2.0 * margin_weight * mgn
    g0 = -beta * s_dpo - pair_weight * beta * s_p1 + two_mw_mgn - anchor_weight * beta * s_a1
    g1 = beta * s_dpo
    g2 = pair_weight * beta * s_p1 - two_mw_mgn
    g3 = pair_weight * beta * s_p2 + two_mw_mgn
    g4 = -pair_weight * beta * s_p2 - two_mw_mgn - anchor_weight * beta_contrast * s_a2

    tl.store(loss_ptr + offs, loss, mask=mask)
    tl.store(terms_ptr + offs, dpo, mask=mask)
    tl.store(terms_ptr + batch + offs, pair, mask=mask)
    tl.store(terms_ptr + 2 * batch + offs, margin, mask=mask)
    tl.store(terms_ptr + 3 * batch + offs, anchor, mask=mask)
    tl.store(z_ptr + offs, z_dpo, mask=mask)
    tl.store(z_ptr + batch + offs, z_p1, mask=mask)
    tl.store(z_ptr + 2 * batch + offs, z_p2, mask=mask)
    tl.store(grad_ptr + offs, grad_scale * g0, mask=mask)
    tl.store(grad_ptr + batch + offs, grad_scale * g1, mask=mask)
    tl.store(grad_ptr + 2 * batch + offs, grad_scale * g2, mask=mask)
    tl.store(grad_ptr + 3 * batch + offs, grad_scale * g3, mask=mask)
    tl.store(grad_ptr + 4 * batch + offs, grad_scale * g4, mask=mask)


def symmpo_terms_forward(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    weights: tuple,
    grad_scale: float | None = None,
):
    """(5, B) policy and reference log-probs -> loss (B,), terms (4, B), z (3, B), grad (5, B).

    ``weights`` = (beta, beta_contrast, pair_weight, margin_weight, anchor_weight, delta);
    grad is ``grad_scale`` * dL_i/ds_k, by default 1/B: the gradient of the batch mean.
    """
    check_launchable(policy_logps)
    policy = policy_logps.detach().to(torch.float32).contiguous()
    ref = ref_logps.detach().to(torch.float32).contiguous()
    batch = policy.shape[1]
    new = lambda *shape: torch.empty(shape, dtype=torch.float32, device=policy.device)  # noqa: E731
    loss, terms, z, grad = new(batch), new(4, batch), new(3, batch), new(NUM_KINDS, batch)
    block = min(max(triton.next_power_of_2(batch), 16), 1024)
    _symmpo_terms_fwd_kernel[(triton.cdiv(batch, block),)](
        policy, ref, loss, terms, z, grad, batch, *map(float, weights),
        1.0 / batch if grad_scale is None else float(grad_scale), BLOCK_B=block,
    )  # fmt: skip
    return loss, terms, z, grad


class FusedSymMPOLoss(torch.autograd.Function):
    """Kind-major (5B, T, V) logits -> the SymMPO batch-mean loss, with no autograd graph inside.

    Forward: the log-prob kernel (saving 4 bytes of LSE per position), then the terms kernel,
    which also yields dL/ds. Backward: g = grad_output * dL/ds (/ count when averaged), then the
    log-prob backward kernel writes dL/dlogits once. Outputs after the loss (policy log-probs,
    per-example loss, terms, z) are not differentiable.

    With ``inplace_grad`` the gradient overwrites the logits buffer: the logits are gone after
    backward, so nothing else may read them later (another loss, a second backward, logging).
    """

    @staticmethod
    def forward(ctx, logits, labels, ref_logps, weights, average, ignore_index, inplace_grad):
        sums, counts, lse = logprobs_forward(logits, labels, ignore_index)
        policy = sums / counts.clamp(min=1) if average else sums
        batch = logits.shape[0] // NUM_KINDS
        per_example, terms, z, grad_logps = symmpo_terms_forward(
            policy.view(NUM_KINDS, batch), ref_logps.view(NUM_KINDS, batch), weights
        )
        ctx.save_for_backward(logits, labels, lse, counts, grad_logps)
        ctx.average, ctx.ignore_index, ctx.inplace_grad = average, ignore_index, inplace_grad
        loss = per_example.sum() / batch
        ctx.mark_non_differentiable(policy, per_example, terms, z)
        return loss, policy, per_example, terms, z

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, *_unused):
        guard_inplace_backward(ctx)
        logits, labels, lse, counts, grad_logps = ctx.saved_tensors
        grad_seq = grad_logps.flatten() * grad_loss.float()
        if ctx.average:
            grad_seq = grad_seq / counts.clamp(min=1)
        grad = logprobs_backward(logits, labels, lse, grad_seq, ctx.ignore_index, ctx.inplace_grad)
        return grad, None, None, None, None, None, None
