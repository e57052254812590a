"""Triton device functions over one row of logits: its logsumexp, and its softmax gradient
(docs/math.md#gradients).

Shared by the (N, T, V) log-prob kernels (logprobs.py) and the flat (P, V) token kernels of the
fused-linear path (token_logprobs.py). Rows are read through ``stride_v`` (1 when contiguous);
``WIDE`` (set by the launchers when vocab * stride_v reaches 2^31) computes the offsets within
a row in int64.
"""

import triton
import triton.language as tl


@triton.jit
def _row_offsets(idx, stride_v, WIDE: tl.constexpr):
    if WIDE:
        return idx.to(tl.int64) * stride_v
    return idx * stride_v


@triton.jit
def row_logsumexp(row_ptr, stride_v, vocab, BLOCK_V: tl.constexpr, WIDE: tl.constexpr):
    """float32 logsumexp of row_ptr[0 : vocab * stride_v : stride_v], online over blocks.

    Reads the row once. The first block is peeled so the running max and sum start as real
    float32 scalars; masked lanes load -inf and add exp(-inf) = 0. The subtracted max is
    floored to 0 while it is still -inf (a block of -inf logits), and the old sum (then 0) is
    not rescaled, so neither exp(-inf + inf) nor 0 * inf appears; a row of only -inf gives -inf.
    """
    cols = tl.arange(0, BLOCK_V)
    x = tl.load(
        row_ptr + _row_offsets(cols, stride_v, WIDE), mask=cols < vocab, other=float("-inf")
    ).to(tl.float32)
    running_max = tl.max(x, axis=0)
    safe_max = tl.where(running_max == float("-inf"), 0.0, running_max)
    running_sum = tl.sum(tl.exp(x - safe_max), axis=0)
    for start in range(BLOCK_V, vocab, BLOCK_V):
        idx = start + cols
        x = tl.load(
            row_ptr + _row_offsets(idx, stride_v, WIDE), mask=idx < vocab, other=float("-inf")
        ).to(tl.float32)
        new_max = tl.maximum(running_max, tl.max(x, axis=0))
        new_safe = tl.where(new_max == float("-inf"), 0.0, new_max)
        scale = tl.where(running_max == float("-inf"), 0.0, tl.exp(safe_max - new_safe))
        running_sum = running_sum * scale + tl.sum(tl.exp(x - new_safe), axis=0)
        running_max, safe_max = new_max, new_safe
    return safe_max + tl.log(running_sum)


@triton.jit
def write_row_grad(
    row_ptr,
    stride_v,
    grad_row_ptr,
    grad_stride_v,
    vocab,
    label,
    g,
    lse,
    BLOCK_V: tl.constexpr,
    WIDE: tl.constexpr,
):
    """grad[v] = g * (1[v == label] - exp(logits[v] - lse)) in grad's dtype.

    Reads the row once and writes it once; grad may alias the row (each block is read before
    it is written).
    """
    cols = tl.arange(0, BLOCK_V)
    for start in range(0, vocab, BLOCK_V):
        idx = start + cols
        mask = idx < vocab
        x = tl.load(row_ptr + _row_offsets(idx, stride_v, WIDE), mask=mask, other=0.0)
        grad = g * (tl.where(idx == label, 1.0, 0.0) - tl.exp(x.to(tl.float32) - lse))
        tl.store(
            grad_row_ptr + _row_offsets(idx, grad_stride_v, WIDE),
            grad.to(grad_row_ptr.dtype.element_ty),
            mask=mask,
        )


@triton.jit
def write_row_zeros(grad_row_ptr, grad_stride_v, vocab, BLOCK_V: tl.constexpr, WIDE: tl.constexpr):
    """grad[v] = 0 for every v (positions that are not targets)."""
    cols = tl.arange(0, BLOCK_V)
    zeros = tl.zeros([BLOCK_V], dtype=grad_row_ptr.dtype.element_ty)
    for start in range(0, vocab, BLOCK_V):
        idx = start + cols
        tl.store(grad_row_ptr + _row_offsets(idx, grad_stride_v, WIDE), zeros, mask=idx < vocab)
