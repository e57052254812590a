"""Fused per-sequence log-probabilities of labels under logits, with a hand-written backward.

Forward, for each row n of an (N, T, V) logits tensor and each position t < T-1 whose next label
y = labels[n, t+1] is not ignore_index:

    lse[n, t] = logsumexp_v logits[n, t, v]                 (float32, saved for backward)
    sums[n]  += logits[n, t, y] - lse[n, t]                  (float32 atomic add)
    counts[n] += 1

Backward, from g[n] = dL/dsums[n] (already divided by counts[n] for averaged log-probs):

    grad[n, t, v] = g[n] * (1[v == y] - exp(logits[n, t, v] - lse[n, t]))   at targets
    grad[n, t, v] = 0                                                       elsewhere

Bytes, for P target positions and 2-byte logits: the forward reads P*V*2 (non-target rows are
never read) and writes 4 bytes per position; the backward reads P*V*2 and writes N*T*V*2 (the
whole gradient, zeros included). No (positions x V) intermediate exists. The logits are read
through their strides, so the shift logits[:, :-1] costs no copy and non-contiguous input works.

The sums are float32 atomics across programs: their addition order, and so the last bits of a
sum, can vary from run to run (about 1e-7 relative).

The math: docs/math.md#sequence-log-probs and docs/math.md#gradients; the bytes against the
floor: docs/math.md#hardware-floor.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .launch import block_config, check_launchable, guard_inplace_backward, wide_rows
from .row_softmax import row_logsumexp, write_row_grad, write_row_zeros

# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _row_offsets(row, seq_len, stride_n, stride_t, label_stride_n, label_stride_t):
    """Row index of the flattened (N*T) positions -> (t, logits offset, next-label offset).

    Offsets are int64: (N*T)*V passes 2^31 at about 67k positions of a 32064 vocabulary.
    """
    row = row.to(tl.int64)
    n = row // seq_len
    t = row % seq_len
    offset = n * stride_n + t * stride_t
    label_offset = n * label_stride_n + (t + 1) * label_stride_t
    return n, t, offset, label_offset


@triton.jit
def _logprobs_fwd_kernel(
    logits_ptr,
    labels_ptr,
    lse_ptr,
    sums_ptr,
    counts_ptr,
    stride_n,
    stride_t,
    stride_v,
    label_stride_n,
    label_stride_t,
    bad_labels_ptr,
    seq_len,
    vocab,
    ignore_index,
    STORE_LSE: tl.constexpr,
    BLOCK_V: tl.constexpr,
    WIDE: tl.constexpr,
):
    """One program per position (n, t). Reads logits[n, t, :] once if it is a target, else nothing.

    Writes lse[n*T + t] (0 at non-targets) when STORE_LSE, and atomically adds the position's
    log-prob and 1 to sums[n] and counts[n]. A label outside [0, vocab) that is not
    ignore_index is never read through; it adds 1 to bad_labels[0] (position 0's label, which
    predicts nothing, is checked by the t = 0 program).
    """
    row = tl.program_id(0)
    n, t, offset, label_offset = _row_offsets(
        row, seq_len, stride_n, stride_t, label_stride_n, label_stride_t
    )
    has_next = t < seq_len - 1
    label = tl.load(labels_ptr + label_offset, mask=has_next, other=ignore_index)
    is_label = label != ignore_index
    in_vocab = (label >= 0) & (label < vocab)
    if is_label & (in_vocab == 0):
        tl.atomic_add(bad_labels_ptr, 1)
    if t == 0:
        first = tl.load(labels_ptr + label_offset - label_stride_t)
        if (first != ignore_index) & ((first < 0) | (first >= vocab)):
            tl.atomic_add(bad_labels_ptr, 1)
    lse = 0.0
    if is_label & in_vocab:
        row_ptr = logits_ptr + offset
        lse = row_logsumexp(row_ptr, stride_v, vocab, BLOCK_V, WIDE)
        target = tl.load(row_ptr + label.to(tl.int64) * stride_v).to(tl.float32)
        tl.atomic_add(sums_ptr + n, target - lse)
        tl.atomic_add(counts_ptr + n, 1)
    if STORE_LSE:
        tl.store(lse_ptr + row, lse)


@triton.jit
def _logprobs_bwd_kernel(
    logits_ptr,
    labels_ptr,
    lse_ptr,
    grad_seq_ptr,
    grad_scale_ptr,
    counts_ptr,
    grad_ptr,
    stride_n,
    stride_t,
    stride_v,
    label_stride_n,
    label_stride_t,
    grad_stride_n,
    grad_stride_t,
    grad_stride_v,
    seq_len,
    vocab,
    ignore_index,
    HAS_SCALE: tl.constexpr,
    AVERAGE: tl.constexpr,
    BLOCK_V: tl.constexpr,
    WIDE: tl.constexpr,
):
    """One program per position: grad[n, t, :] = g[n] (onehot(y) - softmax) or exact zeros,
    with g[n] = grad_seq[n] (* grad_scale[0] when HAS_SCALE) (/ max(counts[n], 1) when AVERAGE).

    Reads logits[n, t, :] once at targets; writes grad[n, t, :] once everywhere. grad may be the
    logits buffer itself (in-place mode): each element is read before it is overwritten.
    """
    row = tl.program_id(0)
    n, t, offset, label_offset = _row_offsets(
        row, seq_len, stride_n, stride_t, label_stride_n, label_stride_t
    )
    grad_offset = n * grad_stride_n + t * grad_stride_t
    has_next = t < seq_len - 1
    label = tl.load(labels_ptr + label_offset, mask=has_next, other=ignore_index)
    grad_row = grad_ptr + grad_offset
    if (label != ignore_index) & (label >= 0) & (label < vocab):  # the forward's targets
        g = tl.load(grad_seq_ptr + n).to(tl.float32)
        if HAS_SCALE:
            g = g * tl.load(grad_scale_ptr).to(tl.float32)
        if AVERAGE:
            g = g / tl.maximum(tl.load(counts_ptr + n), 1).to(tl.float32)
        lse = tl.load(lse_ptr + row)
        write_row_grad(
            logits_ptr + offset,
            stride_v,
            grad_row,
            grad_stride_v,
            vocab,
            label,
            g,
            lse,
            BLOCK_V,
            WIDE,
        )
    else:
        write_row_zeros(grad_row, grad_stride_v, vocab, BLOCK_V, WIDE)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def logprobs_forward(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    store_lse: bool = True,
    block_v: int | None = None,
    num_warps: int | None = None,
    bad_labels: torch.Tensor | None = None,
    zeroed: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    """Launch the forward kernel on (N, T, V) logits and (N, T) int labels.

    Returns (sums (N,) float32, counts (N,) int32, lse (N*T,) float32 or None). Labels outside
    [0, V) (not ignore_index) are skipped, never read through, and counted into
    ``bad_labels[0]`` (an int32 tensor the caller zeroed) when it is given: callers either
    checked the labels beforehand or read that count (one sync) before trusting the result.
    ``zeroed``: (sums, counts) buffers the caller zeroed (one memset for all its buffers);
    by default they are allocated here.
    """
    check_launchable(logits)
    rows, seq_len, vocab = logits.shape
    block, warps = block_config(vocab, logits.device, block_v, num_warps)
    if zeroed is not None:
        sums, counts = zeroed
        spare = bad_labels
    else:
        sums = torch.zeros(rows, dtype=torch.float32, device=logits.device)  # returned: own
        counts_and_spare = torch.zeros(rows + 1, dtype=torch.int32, device=logits.device)
        counts, spare = counts_and_spare[:rows], counts_and_spare[rows:]
    bad_labels = spare if bad_labels is None else bad_labels
    if bad_labels is None:
        raise ValueError("zeroed buffers need a bad_labels counter too")
    lse = torch.empty(rows * seq_len if store_lse else 1, dtype=torch.float32, device=logits.device)
    _logprobs_fwd_kernel[(rows * seq_len,)](
        logits,
        labels,
        lse,
        sums,
        counts,
        *logits.stride(),
        *labels.stride(),
        bad_labels,
        seq_len,
        vocab,
        ignore_index,
        STORE_LSE=store_lse,
        BLOCK_V=block,
        WIDE=wide_rows(logits, vocab),
        num_warps=warps,
    )
    return sums, counts, (lse if store_lse else None)


def logprobs_backward(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    grad_seq: torch.Tensor,
    ignore_index: int = -100,
    inplace: bool = False,
    block_v: int | None = None,
    num_warps: int | None = None,
    *,
    grad_scale: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
    before_launch=None,
) -> torch.Tensor:
    """Gradient of sum_n g[n] * sums[n] with respect to logits, in the logits' dtype.

    g[n] = grad_seq[n], times the one-element ``grad_scale`` when given (the upstream gradient
    of a scalar loss), divided by max(counts[n], 1) when ``counts`` is given (averaged
    log-probs): both folded into the kernel, no extra launch. With ``inplace`` the gradient
    overwrites ``logits`` (no second N*T*V buffer). ``before_launch()``, when given, runs
    right before the kernel's launch, after everything else this function does on the host:
    a check that must sync (and may raise) leaves the GPU idle for the launch's latency only.
    """
    check_launchable(logits)
    rows, seq_len, vocab = logits.shape
    block, warps = block_config(vocab, logits.device, block_v, num_warps, "backward")
    grad = logits if inplace else torch.empty_like(logits)
    grad_seq = grad_seq.contiguous()
    if before_launch is not None:
        before_launch()
    _logprobs_bwd_kernel[(rows * seq_len,)](
        logits,
        labels,
        lse,
        grad_seq,
        grad_seq if grad_scale is None else grad_scale,
        grad_seq if counts is None else counts,
        grad,
        *logits.stride(),
        *labels.stride(),
        *grad.stride(),
        seq_len,
        vocab,
        ignore_index,
        HAS_SCALE=grad_scale is not None,
        AVERAGE=counts is not None,
        BLOCK_V=block,
        WIDE=wide_rows(logits, grad, vocab),
        num_warps=warps,
    )
    return grad


# --------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------


class SequenceLogps(torch.autograd.Function):
    """(N, T, V) logits, (N, T) labels -> (N,) float32 sums (or means) of target log-probs."""

    @staticmethod
    def forward(ctx, logits, labels, average: bool, ignore_index: int, inplace_grad: bool):
        sums, counts, lse = logprobs_forward(logits, labels, ignore_index)
        ctx.save_for_backward(logits, labels, lse, counts)
        ctx.average, ctx.ignore_index, ctx.inplace_grad = average, ignore_index, inplace_grad
        if average:
            return sums / counts.clamp(min=1)
        return sums

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        guard_inplace_backward(ctx)
        logits, labels, lse, counts = ctx.saved_tensors
        counts = counts if ctx.average else None
        grad = logprobs_backward(
            logits, labels, lse, grad_out, ctx.ignore_index, ctx.inplace_grad, counts=counts
        )
        return grad, None, None, None, None
