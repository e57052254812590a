"""Inputs and the providers compared by bench_fused_linear.py and cpu_memory.py.

Every provider takes the same (hidden (5B, T, H), weight (V, H), labels (5B, T), ref_logps (5B,))
and returns a scalar loss to differentiate, the gradient reaching the whole (5B, T, H) hidden
(zeros at the non-target positions). By default every provider does the work of the same P
target positions:

- symmpo_fused_linear takes the whole hidden: its chunks hold the target rows only;
- eager, logits_path, liger_fused_linear_dpo and cce take the hidden rows of the target
  positions (target_rows, gather: one index_select, whose backward adds the rows' gradient into
  a zeroed (5B T, H) tensor), each sequence's targets in order, padded to the sequence with the
  most (W) by rows whose label is -100. Cost of the padding: 5B W - P rows of lm_head FLOPs and
  logits for providers that compute every row they are given (eager, the logits path, Liger;
  CCE drops -100 rows itself): none when every sequence has as many targets, as at the bench's
  shapes. eager and the logits path take the HF layout (a label predicts from the row before
  it), so one more row a sequence (the row after its last target, predicting nothing, as the
  last position of any sequence): 5B rows more than P, 0.5 % at the CUDA shape.

The ``*_all_positions`` providers (eager, logits_path, liger_fused_linear_dpo) are the same
calls on the whole hidden: logits at every position, the non-target ones masked out. (Cut
Cross-Entropy has no such variant: given the whole hidden it drops the -100 positions before
its kernels, so it does the target work either way.)

A provider takes ``rows=target_rows(labels)`` computed beforehand, as a collator would from the
labels on the host (bench_fused_linear.py does, outside the timed step), or computes it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from symmpo import SymMPOConfig, reference, symmpo_loss, symmpo_loss_from_hidden

CONFIG = SymMPOConfig()


def make_inputs(batch, seq_len, hidden, vocab, targets, dtype, device, seed=0):
    """The last ``targets`` positions' labels of each sequence are targets (a response after
    an image + prompt), the rest ignored. hidden, weight require grad."""
    gen = torch.Generator(device=device).manual_seed(seed)
    rows = 5 * batch
    h = torch.randn(rows, seq_len, hidden, device=device, generator=gen).to(dtype)
    w = (torch.randn(vocab, hidden, device=device, generator=gen) / hidden**0.5).to(dtype)
    labels = torch.randint(0, vocab, (rows, seq_len), device=device, generator=gen)
    labels[:, : seq_len - targets] = -100
    ref = -torch.rand(rows, device=device, generator=gen) * targets * 10
    return h.requires_grad_(True), w.requires_grad_(True), labels, ref


class TargetRows(NamedTuple):
    """Where the target positions of a (5B, T) labels tensor are, W = the most in a sequence.

    index: (5B, W + 1) rows of hidden.view(5B T, H): sequence r's target positions t (those
        with labels[r, t + 1] != -100) in order, then r T + T - 1 (its last position, never a
        target) for padding and the one extra row of the HF layout.
    target: (5B, W) the label each target row predicts, -100 for padding.
    labels: (5B, W + 1) the HF layout of the W + 1 rows: -100, then ``target``.
    host: the (5B, T) labels on the host, where a collator makes them: symmpo's fused-linear
        path plans its chunks there with no host sync (given CUDA labels it copies them once).
    """

    index: torch.Tensor
    target: torch.Tensor
    labels: torch.Tensor
    host: torch.Tensor


def target_rows(labels: torch.Tensor, ignore_index: int = -100) -> TargetRows:
    rows, seq_len = labels.shape
    is_target = labels[:, 1:] != ignore_index
    counts = is_target.sum(1)
    width = int(counts.max())
    # Positions of each row's targets first, in order (a stable sort of "not a target").
    position = torch.sort((~is_target).to(torch.uint8), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width, device=labels.device) < counts[:, None]
    last = torch.full_like(position, seq_len - 1)
    base = torch.arange(rows, device=labels.device)[:, None] * seq_len
    index = torch.cat([base + torch.where(valid, position, last), base + seq_len - 1], dim=1)
    target = torch.where(valid, labels.gather(1, position + 1), ignore_index)
    pad = torch.full_like(target[:, :1], ignore_index)
    return TargetRows(index, target, torch.cat([pad, target], dim=1), labels.cpu())


def gather(h: torch.Tensor, rows: TargetRows, hf_layout: bool = False) -> torch.Tensor:
    """(5B, W, H) target rows of ``h`` ((5B, W + 1, H) with ``hf_layout``), differentiable."""
    index = rows.index if hf_layout else rows.index[:, :-1]
    flat = h.reshape(-1, h.shape[-1]).index_select(0, index.reshape(-1))
    return flat.view(*index.shape, h.shape[-1])


def _terms(policy, ref):
    return reference.symmpo_terms(policy.view(5, -1), ref.view(5, -1), CONFIG).loss.mean()


def fused_linear(h, w, labels, ref, rows=None):
    """symmpo_loss_from_hidden on the whole hidden, given the labels on the host."""
    labels = rows.host if rows is not None else labels
    return symmpo_loss_from_hidden(h, w, labels, ref, config=CONFIG).loss


def eager(h, w, labels, ref, rows=None):
    """lm_head on the target rows, float32 log_softmax, gather, terms: autograd for all."""
    rows = rows if rows is not None else target_rows(labels)
    return eager_all_positions(gather(h, rows, hf_layout=True), w, rows.labels, ref)


def eager_all_positions(h, w, labels, ref, rows=None):
    """Full (5B, T, V) logits, float32 log_softmax, gather, terms: autograd for everything."""
    return _terms(reference.sequence_logps(h @ w.t(), labels), ref)


def logits_path(h, w, labels, ref, rows=None):
    """lm_head on the target rows, then the fused logits kernels of symmpo_loss."""
    rows = rows if rows is not None else target_rows(labels)
    return logits_path_all_positions(gather(h, rows, hf_layout=True), w, rows.labels, ref)


def logits_path_all_positions(h, w, labels, ref, rows=None):
    """lm_head over every position, then the fused logits kernels of symmpo_loss."""
    return symmpo_loss(h @ w.t(), labels, ref, config=CONFIG, impl="triton").loss


def _liger(h, w, target):
    """Liger's fused-linear DPO on the two-sequence special case: the first half of the rows
    as chosen, the second as rejected; no reference model (ref log-probs 0). ``target[r, t]``
    is what row t of sequence r predicts."""
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

    loss_fn = LigerFusedLinearDPOLoss(beta=CONFIG.beta, use_ref_model=False, compiled=h.is_cuda)
    out = loss_fn(w, h, target)
    return out[0] if isinstance(out, tuple) else out


def liger_dpo(h, w, labels, ref, rows=None):
    """Liger on the target rows (what each predicts: ``rows.target``)."""
    rows = rows if rows is not None else target_rows(labels)
    return _liger(gather(h, rows), w, rows.target)


def liger_dpo_all_positions(h, w, labels, ref, rows=None):
    """Liger on every position, the labels shifted (position t predicts labels[t + 1])."""
    target = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
    return _liger(h, w, target)


def cce(h, w, labels, ref, rows=None):
    """Cut Cross-Entropy's per-token losses on the target rows (its defaults, including its
    gradient filter), summed per sequence, then the eager SymMPO terms."""
    from cut_cross_entropy import linear_cross_entropy

    rows = rows if rows is not None else target_rows(labels)
    token_nll = linear_cross_entropy(gather(h, rows), w, rows.target, reduction="none")
    # Summed through the mask (CCE gives 0 at -100 rows): the gradient reaching CCE's backward
    # is then a dense tensor; a plain .sum(-1) hands it an expanded one, which its backward's
    # grad_out.view(-1) refuses (cut-cross-entropy 25.1.1).
    valid = (rows.target != -100).float()
    return _terms(-(token_nll.float() * valid).sum(-1), ref)


PROVIDERS = {
    "symmpo_fused_linear": fused_linear,
    "eager": eager,
    "logits_path": logits_path,
    "liger_fused_linear_dpo": liger_dpo,
    "cce": cce,
    "eager_all_positions": eager_all_positions,
    "logits_path_all_positions": logits_path_all_positions,
    "liger_fused_linear_dpo_all_positions": liger_dpo_all_positions,
}


def useful_flops(n_targets: int, hidden: int, vocab: int) -> float:
    """6 P H V: forward logits, grad of hidden, grad of weight at the target positions."""
    return 6.0 * n_targets * hidden * vocab
