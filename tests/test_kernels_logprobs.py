"""The fused log-prob kernels (Triton interpreter) against the float64 reference.

The math checked: docs/math.md#sequence-log-probs and docs/math.md#gradients (into the logits).
"""

import pytest
import torch
import triton
import triton.language as tl
from batches import make_labels
from kernel_helpers import assert_error_within, poisoned_allocations

from symmpo import reference, sequence_logps
from symmpo_kernels import logprobs_backward, logprobs_forward
from symmpo_kernels.logprobs import _row_offsets

SHAPES = [  # (rows, T, V, block_v): block_v None = the default whole-row block
    (10, 6, 1, None),
    (10, 5, 7, None),
    (5, 4, 3001, None),
    (5, 4, 3001, 1024),  # three vocabulary blocks, the last one partial
    (5, 1, 7, None),  # T = 1: no position predicts anything
    (1, 8, 33, 8),
]


def _inputs(rows, seq_len, vocab, dtype, scale=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(rows, seq_len, vocab, generator=gen)).to(dtype)
    if seq_len > 1:
        labels = make_labels(rows, seq_len, vocab, gen)
    else:
        labels = torch.full((rows, 1), -100)
    return logits, labels


def _reference_grad(logits, labels, grad_seq, average):
    x = logits.detach().clone().requires_grad_(True)
    (
        reference.sequence_logps(x, labels, average)
        * grad_seq.to(reference.accumulation_dtype(x.dtype))
    ).sum().backward()
    return x.grad


@pytest.mark.parametrize("rows,seq_len,vocab,block_v", SHAPES)
@pytest.mark.parametrize("average", [False, True])
def test_forward_and_backward_fp32(monkeypatch, rows, seq_len, vocab, block_v, average):
    logits, labels = _inputs(rows, seq_len, vocab, torch.float32)
    exact = reference.sequence_logps(logits.double(), labels, average)
    grad_seq = torch.randn(rows)
    with poisoned_allocations(monkeypatch):
        sums, counts, lse = logprobs_forward(logits, labels, block_v=block_v)
        scale = 1.0 / counts.clamp(min=1) if average else 1.0
        grad = logprobs_backward(logits, labels, lse, grad_seq * scale, block_v=block_v)
    got = sums * scale
    torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-5)
    assert torch.equal(counts.long(), (labels[:, 1:] != -100).sum(-1))
    exact_grad = _reference_grad(logits.double(), labels, grad_seq.double(), average)
    torch.testing.assert_close(grad.double(), exact_grad, rtol=1e-5, atol=1e-6)
    # lse is written everywhere: the position's logsumexp at targets, 0 elsewhere.
    target = torch.zeros(rows, seq_len, dtype=torch.bool)
    target[:, :-1] = labels[:, 1:] != -100
    exact_lse = torch.logsumexp(logits.double(), -1)
    torch.testing.assert_close(lse.view(rows, seq_len)[target].double(), exact_lse[target])
    assert torch.all(lse.view(rows, seq_len)[~target] == 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,seq_len,vocab,block_v", [(10, 5, 7, None), (5, 4, 3001, 1024)])
def test_low_precision_errors_within_torch(monkeypatch, dtype, rows, seq_len, vocab, block_v):
    logits, labels = _inputs(rows, seq_len, vocab, dtype)
    exact = reference.sequence_logps(logits.double(), labels)
    grad_seq = torch.randn(rows)
    with poisoned_allocations(monkeypatch):
        sums, _, lse = logprobs_forward(logits, labels, block_v=block_v)
        grad = logprobs_backward(logits, labels, lse, grad_seq, block_v=block_v)
    assert grad.dtype == dtype
    torch_sums = reference.sequence_logps(logits, labels)
    assert_error_within(sums, torch_sums, exact, eps_scale=1e-6)
    exact_grad = _reference_grad(logits.double(), labels, grad_seq.double(), False)
    torch_grad = _reference_grad(logits, labels, grad_seq, False)
    assert torch_grad.dtype == dtype
    assert_error_within(grad, torch_grad, exact_grad)


def test_huge_logits_stay_finite():
    logits, labels = _inputs(5, 6, 50, torch.float32, scale=1e4)
    sums, _, lse = logprobs_forward(logits, labels)
    grad = logprobs_backward(logits, labels, lse, torch.ones(5))
    assert torch.isfinite(sums).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(sums.double(), reference.sequence_logps(logits.double(), labels))


def test_non_contiguous_logits_read_through_strides(monkeypatch):
    base = torch.randn(5, 7, 2 * 41)
    logits = base[:, ::1, ::2]  # vocabulary stride 2
    padded = torch.randn(5, 7, 64)[:, :, :41]  # a padded vocabulary: row stride 64
    labels = make_labels(5, 7, 41)
    for view in (logits, padded, padded.transpose(0, 1).contiguous().transpose(0, 1)):
        assert not view.is_contiguous()
        with poisoned_allocations(monkeypatch):
            sums, _, lse = logprobs_forward(view, labels)
            grad = logprobs_backward(view, labels, lse, torch.ones(5))
        torch.testing.assert_close(sums, reference.sequence_logps(view, labels))
        torch.testing.assert_close(grad, _reference_grad(view, labels, torch.ones(5), False))


def test_non_contiguous_labels():
    logits, _ = _inputs(5, 6, 9, torch.float32)
    labels = make_labels(6, 5, 9).t()  # (5, 6) view with strides (1, 5)
    assert not labels.is_contiguous()
    sums, _, _ = logprobs_forward(logits, labels)
    torch.testing.assert_close(sums, reference.sequence_logps(logits, labels))


def test_inplace_grad_overwrites_logits(monkeypatch):
    logits, labels = _inputs(10, 5, 13, torch.bfloat16)
    grad_seq = torch.randn(10)
    _, _, lse = logprobs_forward(logits, labels)
    expected = logprobs_backward(logits, labels, lse, grad_seq)
    buffer = logits.clone()
    out = logprobs_backward(buffer, labels, lse, grad_seq, inplace=True)
    assert out.data_ptr() == buffer.data_ptr()
    assert torch.equal(out, expected)


def test_empty_sequence_scores_zero_with_allow_empty():
    logits, labels = _inputs(5, 6, 11, torch.float32)
    labels[2, 1:] = -100
    x = logits.clone().requires_grad_(True)
    out = sequence_logps(x, labels, impl="triton", allow_empty=True, average=True)
    assert out[2].item() == 0.0
    out.sum().backward()
    assert torch.all(x.grad[2] == 0)
    with pytest.raises(ValueError, match="row 2"):
        sequence_logps(logits, labels, impl="triton")


@pytest.mark.parametrize("average", [False, True])
def test_autograd_function_matches_reference(average):
    logits, labels = _inputs(10, 6, 23, torch.float32)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    w = torch.randn(10)
    (sequence_logps(a, labels, average=average, impl="triton") * w).sum().backward()
    (sequence_logps(b, labels, average=average, impl="torch") * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_output_is_its_own_tensor():
    """In-place ops on the returned log-probs work (the result is no view of a kernel buffer)."""
    logits, labels = _inputs(10, 6, 23, torch.float32)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    sequence_logps(a, labels, impl="triton").mul_(2.0).sum().backward()
    (2.0 * sequence_logps(b, labels, impl="torch")).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_labels_outside_the_vocabulary_are_counted_and_skipped():
    """Kernel level: such a label is never read through, counted in bad_labels, and its
    position is no target forward or backward (callers raise on the count)."""
    logits, labels = _inputs(5, 6, 11, torch.float32)
    labels[1, 3], labels[3, 0] = 11, -7  # a target position, and position 0's label
    bad = torch.zeros(1, dtype=torch.int32)
    sums, counts, lse = logprobs_forward(logits, labels, bad_labels=bad)
    assert bad.item() == 2
    skipped = labels.clone()
    skipped[1, 3], skipped[3, 0] = -100, -100
    assert torch.equal(counts.long(), (skipped[:, 1:] != -100).sum(-1))
    exact = reference.sequence_logps(logits.double(), skipped)
    torch.testing.assert_close(sums.double(), exact, rtol=1e-5, atol=1e-5)
    grad = logprobs_backward(logits, labels, lse, torch.ones(5))
    assert torch.all(grad[1, 2] == 0)  # position 2 would have predicted labels[1, 3]


@triton.jit
def _offsets_probe_kernel(
    out_ptr, row, seq_len, stride_n, stride_t, label_stride_n, label_stride_t
):
    n, t, offset, label_offset = _row_offsets(
        row, seq_len, stride_n, stride_t, label_stride_n, label_stride_t
    )
    tl.store(out_ptr, offset)
    tl.store(out_ptr + 1, label_offset)


@pytest.mark.parametrize("row", [0, 70_000 * 3 - 1, 2_000_000])
def test_row_offsets_are_int64_past_2_31(row):
    """(N*T)*V passes 2^31 at ~67k positions of V = 32064: the offset helper must not wrap."""
    seq_len, vocab = 3, 32064
    out = torch.empty(2, dtype=torch.int64)
    _offsets_probe_kernel[(1,)](out, row, seq_len, seq_len * vocab, vocab, seq_len, 1)
    n, t = divmod(row, seq_len)
    assert out[0].item() == n * seq_len * vocab + t * vocab
    assert out[1].item() == n * seq_len + t + 1
    if row > 2**31 // vocab:
        assert out[0].item() > 2**31


def test_masked_first_block_gives_no_nan():
    """A block of -inf logits (a masked vocabulary slice) before the finite ones."""
    logits, labels = _inputs(5, 4, 32, torch.float32)
    logits[..., :16] = float("-inf")
    labels[:, 1:] = 20  # targets in the finite half
    sums, _, lse = logprobs_forward(logits, labels, block_v=16)
    torch.testing.assert_close(sums, reference.sequence_logps(logits, labels))
    grad = logprobs_backward(logits, labels, lse, torch.ones(5), block_v=16)
    assert torch.isfinite(grad).all() and torch.all(grad[..., :16] == 0)


def test_wide_rows_flag_for_huge_vocab_strides():
    from symmpo_kernels.launch import wide_rows

    narrow = torch.empty(2, 3, 7)
    assert not wide_rows(narrow, 7)
    transposed = torch.empty(1, 1).expand(2**20, 4096).t()  # stride(-1) = 0 after expand
    assert not wide_rows(transposed, 2**20)
    strided = torch.empty(4, 2**20)[:, ::1].t()  # (2^20, 4) with stride(-1) = 2^20
    assert wide_rows(strided, 4096)


def test_int64_row_offsets_path_gives_the_same_results(monkeypatch):
    import symmpo_kernels.logprobs as module

    logits, labels = _inputs(5, 4, 37, torch.float32)
    logits = torch.randn(5, 4, 80)[..., ::2][..., :37]  # vocabulary stride 2
    sums, _, lse = logprobs_forward(logits, labels)
    grad = logprobs_backward(logits, labels, lse, torch.ones(5))
    monkeypatch.setattr(module, "wide_rows", lambda *args: True)
    wide_sums, _, wide_lse = logprobs_forward(logits, labels)
    wide_grad = logprobs_backward(logits, labels, wide_lse, torch.ones(5))
    torch.testing.assert_close(wide_sums, sums, rtol=0, atol=1e-6)
    torch.testing.assert_close(wide_grad, grad, rtol=0, atol=0)


def test_masked_first_block_then_very_negative_logits():
    """-inf block first, then logits far below -88 (exp of their max would underflow/overflow)."""
    logits = -110 + 10 * torch.rand(5, 4, 64)
    logits[..., :32] = float("-inf")
    labels = torch.full((5, 4), 40)
    labels[:, 0] = -100
    sums, _, lse = logprobs_forward(logits, labels, block_v=32)
    torch.testing.assert_close(sums, reference.sequence_logps(logits, labels))
    assert torch.isfinite(lse).all()
