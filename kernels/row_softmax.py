"""Triton device functions over one row of logits: its logsumexp, and its softmax gradient.

Shared by the (N, T, V) log-prob kernels (logprobs.py) and the flat (P, V) token kernels of the
fused-linear path (token_logprobs.py). Rows are read through ``stride_v`` (1 when contiguous).
"""

import triton
import triton.language as tl


@triton.jit
def row_logsumexp(row_ptr, stride_v, vocab, BLOCK_V: tl.constexpr):
    """float32 logsumexp of row_ptr[0 : vocab * stride_v : stride_v], online over blocks.

    Reads the row once. The first block is peeled so the running max and sum start as real
    float32 scalars; masked lanes load -inf and add exp(-inf) = 0.
    """
    cols = tl.arange(0, BLOCK_V)
    x = tl.load(row_ptr + cols * stride_v, mask=cols < vocab, other=float("-inf")).to(tl.float32)
    running_max = tl.max(x, axis=0)
    running_sum = tl.sum(tl.exp(x - running_max), axis=0)
    for start in range(BLOCK_V, vocab, BLOCK_V):
        idx = start + cols
        x = tl.load(row_ptr + idx * stride_v, mask=idx < vocab, other=float("-inf"))
        x = x.to(tl.float32)
        new_max = tl.maximum(running_max, tl.max(x, axis=0))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(
            tl.exp(x - new_max), axis=0
        )
        running_max = new_max
    return running_max + tl.log(running_sum)


@triton.jit
def write_row_grad(
    row_ptr, stride_v, grad_row_ptr, grad_stride_v, vocab, label, g, lse, BLOCK_V: tl.constexpr
):
    """grad[v] = g * (1[v == label] - exp(logits[v] - lse)) in grad's dtype.

    Reads the row once and writes it once; grad may alias the row (each block is read before
    it is written).
    """
    cols = tl.arange(0, BLOCK_V)
    for start in range(0, vocab, BLOCK_V):
        idx = start + cols
        mask = idx < vocab
        x = tl.load(row_ptr + idx * stride_v, mask=mask, other=0.0).to(tl.float32)
        grad = g * (tl.where(idx == label, 1.0, 0.0) - tl.exp(x - lse))
        tl.store(
            grad_row_ptr + idx * grad_stride_v,
            grad.to(grad_row_ptr.dtype.element_ty),
            mask=mask,
        )


@triton.jit
def write_row_zeros(grad_row_ptr, grad_stride_v, vocab, BLOCK_V: tl.constexpr):
    """grad[v] = 0 for every v (positions that are not targets)."""
    cols = tl.arange(0, BLOCK_V)
    zeros = tl.zeros([BLOCK_V], dtype=grad_row_ptr.dtype.element_ty)
    for start in range(0, vocab, BLOCK_V):
        idx = start + cols
        tl.store(grad_row_ptr + idx * grad_stride_v, zeros, mask=idx < vocab)
