"""The eager PyTorch oracle of docs/math.md: the test reference and the benchmark baseline.

Everything here is plain autograd-friendly torch, written for clarity, not speed: the log-softmax
below materialises a float32 (N, T-1, V) tensor, which is exactly what the fused kernels avoid.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .config import SymMPOConfig

#: The five sequences of one example, in the released code's order: docs/math.md#the-five-sequences.
KIND_NAMES = ("chosen", "rejected", "contrast_on_image", "chosen_on_contrast", "contrast")
NUM_KINDS = len(KIND_NAMES)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (for gradcheck); every other float accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def target_mask(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """(N, T-1) bool: logits position t predicts ``labels[:, t+1]``, a target unless ignored."""
    return labels[:, 1:] != ignore_index


def sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    average: bool = False,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Sum (or mean) over target positions of log p(label | prefix), one value per sequence
    (docs/math.md#sequence-log-probs).

    logp_t = logits[t, y] - logsumexp_v logits[t, v] with y = labels[t+1] != ignore_index;
    s = sum_t logp_t, divided by the number of targets when ``average`` (0 for a sequence
    without targets).

    Shapes: logits (N, T, V), labels (N, T) -> (N,) in float32 (float64 for float64 logits).
    The shift is a view; the masking copies it once (in the logits' dtype); the log-softmax
    is an (N, T-1, V) float32 temporary.

    Non-target positions are zeroed before the log-softmax (no host sync, no data-dependent
    shape): whatever they hold (NaN, inf) reaches neither the value nor the gradient, which
    is exactly 0 there. Masking after the log-softmax would not do: a NaN row's softmax is NaN,
    and its backward would spread NaN * 0 = NaN.
    """
    acc = accumulation_dtype(logits.dtype)
    next_labels = labels[:, 1:]
    mask = next_labels != ignore_index
    shifted_logits = logits[:, :-1, :].masked_fill(~mask.unsqueeze(-1), 0)
    safe_labels = torch.where(mask, next_labels, torch.zeros_like(next_labels)).long()
    token_logps = torch.log_softmax(shifted_logits.to(acc), dim=-1)
    token_logps = token_logps.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    total = (token_logps * mask).sum(-1)
    if average:
        total = total / mask.sum(-1).clamp(min=1).to(acc)
    return total


class SymMPOTerms(NamedTuple):
    """Per-example (B,) tensors of the SymMPO objective."""

    loss: (
        torch.Tensor
    )  # L = L_dpo + pair_weight L_pair + margin_weight L_margin + anchor_weight L_anchor
    dpo: torch.Tensor  # -log sig(z_dpo)
    pair: torch.Tensor  # -log sig(z_p1) - log sig(z_p2)
    margin: torch.Tensor  # mgn^2
    anchor: torch.Tensor  # -log sig(a1) - log sig(a2)
    z_dpo: torch.Tensor  # beta (r0 - r1)
    z_p1: torch.Tensor  # beta (r0 - r2)
    z_p2: torch.Tensor  # beta (r4 - r3)


def symmpo_terms(
    policy_logps: torch.Tensor, ref_logps: torch.Tensor, config: SymMPOConfig
) -> SymMPOTerms:
    """The terms of docs/math.md#the-loss from (5, B) policy and reference sequence log-probs.

    r_k = s_k - s_k^ref;  z_dpo = beta (r0 - r1);  z_p1 = beta (r0 - r2);  z_p2 = beta (r4 - r3);
    mgn = (r0 - r2) - (r4 - r3);  a1 = beta r0 - delta;  a2 = beta_contrast r4 - delta.
    -log sigmoid is computed as -logsigmoid, finite for any finite input.
    """
    beta, beta_c = config.beta, config.contrast_beta
    r = policy_logps - ref_logps
    z_dpo = beta * (r[0] - r[1])
    z_p1 = beta * (r[0] - r[2])
    z_p2 = beta * (r[4] - r[3])
    mgn = (r[0] - r[2]) - (r[4] - r[3])
    a1 = beta * r[0] - config.delta
    a2 = beta_c * r[4] - config.delta
    dpo = -F.logsigmoid(z_dpo)
    pair = -F.logsigmoid(z_p1) - F.logsigmoid(z_p2)
    margin = mgn * mgn
    anchor = -F.logsigmoid(a1) - F.logsigmoid(a2)
    loss = (
        dpo
        + config.pair_weight * pair
        + config.margin_weight * margin
        + config.anchor_weight * anchor
    )
    return SymMPOTerms(loss, dpo, pair, margin, anchor, z_dpo, z_p1, z_p2)


def symmpo_rewards(
    policy_logps: torch.Tensor, ref_logps: torch.Tensor, config: SymMPOConfig
) -> torch.Tensor:
    """(5, B) implicit rewards: beta r_k for k = 0, 1, 2 and beta_contrast r_k for k = 3, 4
    (docs/math.md#rewards)."""
    r = policy_logps - ref_logps
    return torch.cat([config.beta * r[:3], config.contrast_beta * r[3:]])


def dpo_terms(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float):
    """DPO on (chosen, rejected): returns per-example (loss, z) with z = beta (r0 - r1)
    (docs/math.md#baselines)."""
    r = policy_logps - ref_logps
    z = beta * (r[0] - r[1])
    return -F.logsigmoid(z), z


def mdpo_terms(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    beta: float,
    cond_weight: float = 1.0,
    anchor_weight: float = 1.0,
):
    """mDPO (Wang et al. 2024) on (chosen, rejected, chosen on the corrupted image), rows 0, 1, 2
    (docs/math.md#baselines).

    L = -log sig(beta (r0 - r1)) + cond_weight * -log sig(beta (r0 - r0c))
        + anchor_weight * -log sig(beta r0).
    Returns per-example (loss, dpo, cond, anchor, z_dpo, z_cond).
    """
    r = policy_logps - ref_logps
    z_dpo = beta * (r[0] - r[1])
    z_cond = beta * (r[0] - r[2])
    dpo = -F.logsigmoid(z_dpo)
    cond = -F.logsigmoid(z_cond)
    anchor = -F.logsigmoid(beta * r[0])
    return dpo + cond_weight * cond + anchor_weight * anchor, dpo, cond, anchor, z_dpo, z_cond
