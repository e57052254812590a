"""Log-probs of gathered target positions, for the fused-linear path (no (N, T) layout).

Forward, for each row p of a (P, V) logits chunk with target y_p and segment (sequence) s_p:

    lse[p] = logsumexp_v logits[p, v]            (float32)
    sums[s_p] += logits[p, y_p] - lse[p]          (float32 atomic add into a caller's buffer)

Backward, from a per-row weight g[p] (dL/ds of its sequence, / its count when averaged):

    grad[p, v] = g[p] * (1[v == y_p] - exp(logits[p, v] - lse[p]))

written in the logits' dtype, by default over the logits chunk itself. Bytes: the forward reads
P V e and writes 4 P; the backward reads P V e and writes P V e (e = element size).

The math: docs/math.md#sequence-log-probs and docs/math.md#gradients.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import block_config, check_launchable, wide_rows
from .row_softmax import row_logsumexp, write_row_grad


@triton.jit
def _token_logprobs_fwd_kernel(
    logits_ptr,
    targets_ptr,
    segments_ptr,
    lse_ptr,
    sums_ptr,
    stride_p,
    stride_v,
    vocab,
    BLOCK_V: tl.constexpr,
    WIDE: tl.constexpr,
):
    """One program per row p: reads logits[p, :] once, writes lse[p], adds to sums[segment]."""
    p = tl.program_id(0)
    row_ptr = logits_ptr + p.to(tl.int64) * stride_p
    lse = row_logsumexp(row_ptr, stride_v, vocab, BLOCK_V, WIDE)
    target = tl.load(targets_ptr + p).to(tl.int64)
    logit = tl.load(row_ptr + target * stride_v).to(tl.float32)
    tl.store(lse_ptr + p, lse)
    tl.atomic_add(sums_ptr + tl.load(segments_ptr + p), logit - lse)


@triton.jit
def _token_logprobs_bwd_kernel(
    logits_ptr,
    targets_ptr,
    lse_ptr,
    weights_ptr,
    grad_ptr,
    stride_p,
    stride_v,
    grad_stride_p,
    grad_stride_v,
    vocab,
    BLOCK_V: tl.constexpr,
    WIDE: tl.constexpr,
):
    """One program per row p: grad[p, :] = g[p] (onehot(y_p) - softmax(logits[p]))."""
    p = tl.program_id(0)
    write_row_grad(
        logits_ptr + p.to(tl.int64) * stride_p,
        stride_v,
        grad_ptr + p.to(tl.int64) * grad_stride_p,
        grad_stride_v,
        vocab,
        tl.load(targets_ptr + p),
        tl.load(weights_ptr + p),
        tl.load(lse_ptr + p),
        BLOCK_V,
        WIDE,
    )


def token_logprobs_forward(
    logits: torch.Tensor, targets: torch.Tensor, segments: torch.Tensor, sums: torch.Tensor
) -> torch.Tensor:
    """(P, V) logits, (P,) int targets in [0, V), (P,) int segments indexing ``sums`` (float32,
    accumulated in place) -> lse (P,) float32."""
    check_launchable(logits)
    positions, vocab = logits.shape
    lse = torch.empty(positions, dtype=torch.float32, device=logits.device)
    if positions == 0:
        return lse
    block, warps = block_config(vocab, logits.device)
    _token_logprobs_fwd_kernel[(positions,)](
        logits,
        targets,
        segments,
        lse,
        sums,
        *logits.stride(),
        vocab,
        BLOCK_V=block,
        WIDE=wide_rows(logits, vocab),
        num_warps=warps,
    )
    return lse


def token_logprobs_backward(
    logits: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    weights: torch.Tensor,
    inplace: bool = True,
) -> torch.Tensor:
    """dL/dlogits of sum_p weights[p] logp[p], over ``logits`` itself unless ``inplace=False``."""
    check_launchable(logits)
    positions, vocab = logits.shape
    grad = logits if inplace else torch.empty_like(logits)
    if positions == 0:
        return grad
    block, warps = block_config(vocab, logits.device, kernel="backward")
    _token_logprobs_bwd_kernel[(positions,)](
        logits,
        targets,
        lse,
        weights.to(torch.float32).contiguous(),
        grad,
        *logits.stride(),
        *grad.stride(),
        vocab,
        BLOCK_V=block,
        WIDE=wide_rows(logits, grad, vocab),
        num_warps=warps,
    )
    return grad


__all__ = ["token_logprobs_backward", "token_logprobs_forward"]
