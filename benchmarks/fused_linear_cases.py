"""Inputs and the providers compared by bench_fused_linear.py and cpu_memory.py.

Every provider takes the same (hidden (5B, T, H), weight (V, H), labels (5B, T), ref_logps (5B,))
and returns a scalar loss to differentiate; all score the same target positions.
"""

from __future__ import annotations

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


def fused_linear(h, w, labels, ref):
    return symmpo_loss_from_hidden(h, w, labels, ref, config=CONFIG).loss


def eager(h, w, labels, ref):
    """Full (5B, T, V) logits, float32 log_softmax, gather, terms: autograd for everything."""
    policy = reference.sequence_logps(h @ w.t(), labels)
    return reference.symmpo_terms(policy.view(5, -1), ref.view(5, -1), CONFIG).loss.mean()


def logits_path(h, w, labels, ref):
    """lm_head over every position, then the fused logits kernels of symmpo_loss."""
    return symmpo_loss(h @ w.t(), labels, ref, config=CONFIG, impl="triton").loss


def liger_dpo(h, w, labels, ref):
    """Liger's fused-linear DPO on the two-sequence special case, same tensors: the first half
    of the rows as chosen, the second as rejected; no reference model (ref log-probs 0)."""
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

    target = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
    loss_fn = LigerFusedLinearDPOLoss(beta=CONFIG.beta, use_ref_model=False, compiled=h.is_cuda)
    out = loss_fn(w, h, target)
    return out[0] if isinstance(out, tuple) else out


def cce(h, w, labels, ref):
    """Cut Cross-Entropy's per-token losses (its defaults, including its gradient filter),
    summed per sequence, then the eager SymMPO terms."""
    from cut_cross_entropy import linear_cross_entropy

    token_nll = linear_cross_entropy(h, w, labels, shift=True, reduction="none")
    policy = -token_nll.float().sum(-1)
    return reference.symmpo_terms(policy.view(5, -1), ref.view(5, -1), CONFIG).loss.mean()


PROVIDERS = {
    "symmpo_fused_linear": fused_linear,
    "eager": eager,
    "logits_path": logits_path,
    "liger_fused_linear_dpo": liger_dpo,
    "cce": cce,
}


def useful_flops(n_targets: int, hidden: int, vocab: int) -> float:
    """6 P H V: forward logits, grad of hidden, grad of weight at the target positions."""
    return 6.0 * n_targets * hidden * vocab
