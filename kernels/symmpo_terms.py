"""The SymMPO terms and their gradients in one launch (the autograd path is in fused_loss.py).

From (5, B) policy log-probs s_k and reference log-probs s_k^ref (r_k = s_k - s_k^ref), per
example (docs/math.md#the-loss and docs/math.md#gradients):

    z_dpo = beta (r0 - r1)   z_p1 = beta (r0 - r2)   z_p2 = beta (r4 - r3)
    mgn = (r0 - r2) - (r4 - r3)   a1 = beta r0 - delta   a2 = beta_c r4 - delta
    loss = -ls(z_dpo) + pw (-ls(z_p1) - ls(z_p2)) + mw mgn^2 + aw (-ls(a1) - ls(a2))

with ls = log sigmoid, and dL/ds_k of the batch mean (the 1/B included), the implicit rewards,
and the batch means every trainer logs (term means, accuracies z > 0, reward margins, mean
rewards). Reads 60 B bytes, writes 4 (5+1+4+3+5+5) B + 76 bytes in one program: the launch is
tiny, and it replaces some thirty small launches (autograd graph, metrics, input checks).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .launch import check_launchable

NUM_KINDS = 5


@triton.jit
def _log_sigmoid(z):
    """log sigmoid(z) = min(z, 0) - log(1 + exp(-|z|)): finite for every finite z."""
    return tl.minimum(z, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(z)))


@triton.jit
def _policy_and_reward(
    k,
    offs,
    mask,
    batch,
    sums_ptr,
    counts_ptr,
    ref_ptr,
    policy_ptr,
    HAS_COUNTS: tl.constexpr,
    AVERAGE: tl.constexpr,
):
    """Sequence kind k of the examples at ``offs``: writes its log-prob s_k (the sum divided by
    max(count, 1) when AVERAGE) and returns (r_k = s_k - s_k^ref, 1 where the sequence has no
    target, 1 where its reference is NaN or infinite); masked lanes give zeros."""
    s = tl.load(sums_ptr + k * batch + offs, mask=mask, other=0.0)
    empty = tl.zeros_like(offs)  # int32, like the block's offsets
    if HAS_COUNTS:
        count = tl.load(counts_ptr + k * batch + offs, mask=mask, other=1)
        empty = tl.where(count == 0, 1, 0)
        if AVERAGE:
            s = s / tl.maximum(count, 1).to(tl.float32)
    tl.store(policy_ptr + k * batch + offs, s, mask=mask)
    ref = tl.load(ref_ptr + k * batch + offs, mask=mask, other=0.0)
    bad_ref = tl.where((ref != ref) | (tl.abs(ref) == float("inf")), 1, 0)
    return s - ref, empty, bad_ref


@triton.jit
def _masked(x, mask):
    return tl.where(mask, x, 0.0)


@triton.jit
def _symmpo_terms_kernel(
    sums_ptr,
    counts_ptr,
    ref_ptr,
    policy_ptr,
    loss_ptr,
    terms_ptr,
    z_ptr,
    grad_ptr,
    rewards_ptr,
    summary_ptr,
    mean_loss_ptr,
    flags_ptr,
    batch,
    beta,
    beta_contrast,
    pair_weight,
    margin_weight,
    anchor_weight,
    delta,
    grad_scale,
    HAS_COUNTS: tl.constexpr,
    AVERAGE: tl.constexpr,
    POISON: tl.constexpr,
    ALLOW_EMPTY: tl.constexpr,
    CHECK_REF: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """One program over all B examples, BLOCK_B at a time. Inputs (5, B) contiguous: float32
    sums, int32 counts (when HAS_COUNTS), float32 reference log-probs.

    Per example: policy (5, B) log-probs, loss (B,), terms (4, B) = (dpo, pair, margin,
    anchor), z (3, B) = (z_dpo, z_p1, z_p2), grad (5, B) = grad_scale * dL_i/ds_k, rewards
    (5, B). Batch means: summary (16,) = (mean loss, 4 term means, 3 accuracies (z > 0),
    3 reward margins (mean z), 5 mean rewards), and the mean loss again in mean_loss (()).
    flags[1] = sequences without a target (when HAS_COUNTS), flags[2] = non-finite reference
    log-probs (flags[0] is the log-prob kernel's count of bad labels).

    POISON: when the flags mark the input invalid (bad labels; empty sequences unless
    ALLOW_EMPTY; non-finite reference log-probs when CHECK_REF), every output is overwritten
    with NaN, so that a caller who defers reading the flags (no host sync) can
    never see a plausible number computed from bad input.
    """
    cols = tl.arange(0, BLOCK_B)
    zero = tl.zeros([BLOCK_B], dtype=tl.float32)
    sum_loss, sum_dpo, sum_pair, sum_margin, sum_anchor = zero, zero, zero, zero, zero
    pos_dpo, pos_p1, pos_p2, sum_z_dpo, sum_z_p1, sum_z_p2 = zero, zero, zero, zero, zero, zero
    sum_r0, sum_r1, sum_r2, sum_r3, sum_r4 = zero, zero, zero, zero, zero
    empty = tl.zeros([BLOCK_B], dtype=tl.int32)
    bad_ref = tl.zeros([BLOCK_B], dtype=tl.int32)
    for start in range(0, batch, BLOCK_B):
        offs = start + cols
        mask = offs < batch
        r0, e0, b0 = _policy_and_reward(
            0, offs, mask, batch, sums_ptr, counts_ptr, ref_ptr, policy_ptr, HAS_COUNTS, AVERAGE
        )
        r1, e1, b1 = _policy_and_reward(
            1, offs, mask, batch, sums_ptr, counts_ptr, ref_ptr, policy_ptr, HAS_COUNTS, AVERAGE
        )
        r2, e2, b2 = _policy_and_reward(
            2, offs, mask, batch, sums_ptr, counts_ptr, ref_ptr, policy_ptr, HAS_COUNTS, AVERAGE
        )
        r3, e3, b3 = _policy_and_reward(
            3, offs, mask, batch, sums_ptr, counts_ptr, ref_ptr, policy_ptr, HAS_COUNTS, AVERAGE
        )
        r4, e4, b4 = _policy_and_reward(
            4, offs, mask, batch, sums_ptr, counts_ptr, ref_ptr, policy_ptr, HAS_COUNTS, AVERAGE
        )
        empty += e0 + e1 + e2 + e3 + e4
        bad_ref += b0 + b1 + b2 + b3 + b4

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
        tl.store(rewards_ptr + offs, beta * r0, mask=mask)
        tl.store(rewards_ptr + batch + offs, beta * r1, mask=mask)
        tl.store(rewards_ptr + 2 * batch + offs, beta * r2, mask=mask)
        tl.store(rewards_ptr + 3 * batch + offs, beta_contrast * r3, mask=mask)
        tl.store(rewards_ptr + 4 * batch + offs, beta_contrast * r4, mask=mask)

        sum_loss += _masked(loss, mask)
        sum_dpo += _masked(dpo, mask)
        sum_pair += _masked(pair, mask)
        sum_margin += _masked(margin, mask)
        sum_anchor += _masked(anchor, mask)
        pos_dpo += _masked(tl.where(z_dpo > 0, 1.0, 0.0), mask)
        pos_p1 += _masked(tl.where(z_p1 > 0, 1.0, 0.0), mask)
        pos_p2 += _masked(tl.where(z_p2 > 0, 1.0, 0.0), mask)
        sum_z_dpo += _masked(z_dpo, mask)
        sum_z_p1 += _masked(z_p1, mask)
        sum_z_p2 += _masked(z_p2, mask)
        sum_r0 += _masked(beta * r0, mask)
        sum_r1 += _masked(beta * r1, mask)
        sum_r2 += _masked(beta * r2, mask)
        sum_r3 += _masked(beta_contrast * r3, mask)
        sum_r4 += _masked(beta_contrast * r4, mask)

    inv_batch = 1.0 / batch
    mean_loss = tl.sum(sum_loss, axis=0) * inv_batch
    tl.store(summary_ptr + 0, mean_loss)
    tl.store(mean_loss_ptr, mean_loss)
    tl.store(summary_ptr + 1, tl.sum(sum_dpo, axis=0) * inv_batch)
    tl.store(summary_ptr + 2, tl.sum(sum_pair, axis=0) * inv_batch)
    tl.store(summary_ptr + 3, tl.sum(sum_margin, axis=0) * inv_batch)
    tl.store(summary_ptr + 4, tl.sum(sum_anchor, axis=0) * inv_batch)
    tl.store(summary_ptr + 5, tl.sum(pos_dpo, axis=0) * inv_batch)
    tl.store(summary_ptr + 6, tl.sum(pos_p1, axis=0) * inv_batch)
    tl.store(summary_ptr + 7, tl.sum(pos_p2, axis=0) * inv_batch)
    tl.store(summary_ptr + 8, tl.sum(sum_z_dpo, axis=0) * inv_batch)
    tl.store(summary_ptr + 9, tl.sum(sum_z_p1, axis=0) * inv_batch)
    tl.store(summary_ptr + 10, tl.sum(sum_z_p2, axis=0) * inv_batch)
    tl.store(summary_ptr + 11, tl.sum(sum_r0, axis=0) * inv_batch)
    tl.store(summary_ptr + 12, tl.sum(sum_r1, axis=0) * inv_batch)
    tl.store(summary_ptr + 13, tl.sum(sum_r2, axis=0) * inv_batch)
    tl.store(summary_ptr + 14, tl.sum(sum_r3, axis=0) * inv_batch)
    tl.store(summary_ptr + 15, tl.sum(sum_r4, axis=0) * inv_batch)
    n_empty = tl.sum(empty, axis=0)
    n_bad_ref = tl.sum(bad_ref, axis=0)
    tl.store(flags_ptr + 1, n_empty)
    tl.store(flags_ptr + 2, n_bad_ref)
    if POISON:
        invalid = tl.load(flags_ptr) > 0
        if not ALLOW_EMPTY:
            invalid = invalid | (n_empty > 0)
        if CHECK_REF:
            invalid = invalid | (n_bad_ref > 0)
        if invalid:
            # The NaN below overwrite elements other threads stored: order the two writes.
            tl.debug_barrier()
            _store_nan(
                policy_ptr,
                loss_ptr,
                terms_ptr,
                z_ptr,
                grad_ptr,
                rewards_ptr,
                summary_ptr,
                mean_loss_ptr,
                batch,
                BLOCK_B,
            )


@triton.jit
def _store_nan(
    policy_ptr,
    loss_ptr,
    terms_ptr,
    z_ptr,
    grad_ptr,
    rewards_ptr,
    summary_ptr,
    mean_loss_ptr,
    batch,
    BLOCK_B: tl.constexpr,
):
    """NaN into every output of the terms kernel: policy, grad and rewards (5, B), loss (B,),
    terms (4, B), z (3, B), summary (16,: BLOCK_B is at least 16), mean_loss (())."""
    cols = tl.arange(0, BLOCK_B)
    nan = tl.full([BLOCK_B], float("nan"), tl.float32)
    for start in range(0, 5 * batch, BLOCK_B):
        offs = start + cols
        tl.store(policy_ptr + offs, nan, mask=offs < 5 * batch)
        tl.store(grad_ptr + offs, nan, mask=offs < 5 * batch)
        tl.store(rewards_ptr + offs, nan, mask=offs < 5 * batch)
        tl.store(loss_ptr + offs, nan, mask=offs < batch)
        tl.store(terms_ptr + offs, nan, mask=offs < 4 * batch)
        tl.store(z_ptr + offs, nan, mask=offs < 3 * batch)
    tl.store(summary_ptr + cols, nan, mask=cols < 16)
    tl.store(mean_loss_ptr + cols, nan, mask=cols < 1)


#: The three preferences the metrics report (docs/math.md#metrics).
PREFERENCES = ("dpo", "pair1", "pair2")
#: The order of ``TermsResult.summary``: the mean loss, the four term means, the accuracy and the
#: reward margin of each preference, and the mean reward of each sequence kind.
SUMMARY_NAMES = (
    ("loss", "dpo", "pair", "margin", "anchor")
    + tuple(f"accuracy_{name}" for name in PREFERENCES)
    + tuple(f"reward_margin_{name}" for name in PREFERENCES)
    + tuple(f"reward_{k}" for k in range(NUM_KINDS))
)
#: The order of the int32 validation flags: bad labels, sequences without a target, and
#: non-finite reference log-probs.
FLAG_NAMES = ("bad_labels", "empty_sequences", "nonfinite_ref_logps")


class TermsResult(NamedTuple):
    """The terms kernel's outputs (all float32 but ``flags``)."""

    policy: torch.Tensor  # (5, B) log-probs (averaged when asked)
    loss: torch.Tensor  # (B,) per-example loss
    terms: torch.Tensor  # (4, B)
    z: torch.Tensor  # (3, B)
    grad: torch.Tensor  # (5, B) grad_scale * dL_i/ds_k
    rewards: torch.Tensor  # (5, B)
    summary: torch.Tensor  # (16,) batch means, in SUMMARY_NAMES order
    mean_loss: torch.Tensor  # () the batch-mean loss, its own tensor
    flags: torch.Tensor  # (3,) int32, in FLAG_NAMES order


def terms_and_summary(
    sums: torch.Tensor,
    ref_logps: torch.Tensor,
    weights: tuple,
    *,
    counts: torch.Tensor | None = None,
    average: bool = False,
    grad_scale: float | None = None,
    flags: torch.Tensor | None = None,
    poison: tuple[bool, bool] | None = None,
) -> TermsResult:
    """One launch from (5, B) log-prob sums (and int32 counts) to every per-example and batch
    output of the loss (TermsResult).

    ``weights`` = (beta, beta_contrast, pair_weight, margin_weight, anchor_weight, delta);
    ``average`` divides the sums by max(count, 1); grad is ``grad_scale`` * dL_i/ds_k, by
    default 1/B (the gradient of the batch mean). ``flags``: an int32 (3,) tensor whose
    elements 1 and 2 the kernel writes (element 0 belongs to the log-prob kernel).
    ``poison`` = (allow_empty, check_ref): NaN in every output when the flags mark the input
    invalid under those rules (the kernel's POISON); None: no poisoning.
    """
    check_launchable(sums)
    if average and counts is None:
        raise ValueError("average=True needs the counts")
    sums = sums.detach().to(torch.float32).contiguous()
    ref = ref_logps.detach().to(torch.float32).contiguous()
    batch = sums.shape[1]
    new = lambda *shape: torch.empty(shape, dtype=torch.float32, device=sums.device)  # noqa: E731
    if flags is None:
        flags = torch.zeros(3, dtype=torch.int32, device=sums.device)
    result = TermsResult(
        policy=new(NUM_KINDS, batch),
        loss=new(batch),
        terms=new(4, batch),
        z=new(3, batch),
        grad=new(NUM_KINDS, batch),
        rewards=new(NUM_KINDS, batch),
        summary=new(len(SUMMARY_NAMES)),
        mean_loss=new(),
        flags=flags,
    )
    counts_arg = sums if counts is None else counts.contiguous()  # unread without counts
    grad_scale = 1.0 / batch if grad_scale is None else float(grad_scale)
    _symmpo_terms_kernel[(1,)](
        sums,
        counts_arg,
        ref,
        *result[:-1],
        result.flags,
        batch,
        *map(float, weights),
        grad_scale,
        HAS_COUNTS=counts is not None,
        AVERAGE=average,
        POISON=poison is not None,
        ALLOW_EMPTY=bool(poison and poison[0]),
        CHECK_REF=bool(poison and poison[1]),
        BLOCK_B=min(max(triton.next_power_of_2(batch), 16), 1024),
    )
    return result


def symmpo_terms_forward(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    weights: tuple,
    grad_scale: float | None = None,
):
    """(5, B) policy and reference log-probs -> loss (B,), terms (4, B), z (3, B), grad (5, B):
    ``terms_and_summary`` without counts, for callers that need only these."""
    result = terms_and_summary(policy_logps, ref_logps, weights, grad_scale=grad_scale)
    return result.loss, result.terms, result.z, result.grad
