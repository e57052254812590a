"""Random kind-major SymMPO batches for tests: prompt positions ignored, right padding."""

from __future__ import annotations

import torch


def make_labels(rows: int, seq_len: int, vocab: int, generator=None, min_targets: int = 1):
    """(rows, seq_len) labels: a random-length ignored prompt, targets, ignored right padding.

    Every row keeps at least ``min_targets`` targets among positions 1..seq_len-1.
    """
    labels = torch.randint(0, vocab, (rows, seq_len), generator=generator)
    for i in range(rows):
        room = seq_len - 1 - min_targets
        prompt = int(torch.randint(1, 2 + max(room // 2, 0), (1,), generator=generator))
        prompt = min(prompt, seq_len - min_targets)
        pad = int(
            torch.randint(0, 1 + max(seq_len - prompt - min_targets, 0), (1,), generator=generator)
        )
        labels[i, :prompt] = -100
        if pad:
            labels[i, seq_len - pad :] = -100
    return labels


def make_batch(batch=2, seq_len=6, vocab=11, dtype=torch.float32, scale=2.0, seed=0):
    """logits (5B, T, V), labels (5B, T), ref_logps (5B,) float32."""
    gen = torch.Generator().manual_seed(seed)
    rows = 5 * batch
    logits = (scale * torch.randn(rows, seq_len, vocab, generator=gen)).to(dtype)
    labels = make_labels(rows, seq_len, vocab, gen)
    ref_logps = -3.0 * torch.rand(rows, generator=gen) * (labels[:, 1:] != -100).sum(-1)
    return logits, labels, ref_logps


#: Non-default SymMPO weights for the tests that compare against tests/math_oracle.py.
NON_DEFAULT_WEIGHTS = dict(
    beta=0.25, beta_contrast=0.15, pair_weight=0.8, margin_weight=0.01, anchor_weight=0.3, delta=0.2
)
WEIGHT_NAMES = ("beta", "beta_contrast", "pair_weight", "margin_weight", "anchor_weight", "delta")


def weights_of(config) -> dict:
    """A SymMPOConfig's loss weights as keyword arguments (beta_contrast resolved)."""
    return dict(zip(WEIGHT_NAMES, config.kernel_weights, strict=True))


def non_targets(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """(N, T) bool: the positions whose logits predict no target (the next label is ignored,
    or there is none: the last position). No loss may read them."""
    ignored = torch.ones(labels.shape, dtype=torch.bool, device=labels.device)
    ignored[:, :-1] = labels[:, 1:] == ignore_index
    return ignored


def spoil(logits: torch.Tensor, where: torch.Tensor, value: float) -> torch.Tensor:
    """A copy of (N, T, V) ``logits`` holding ``value`` (NaN, inf) at the (N, T) ``where``."""
    return logits.masked_fill(where.unsqueeze(-1), value)
