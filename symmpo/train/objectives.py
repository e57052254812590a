"""From a collated batch to the loss: the policy's hidden states, then this library's loss API.

SymMPO goes through ``symmpo_loss_from_hidden`` (target positions only, no logits tensor), or
through lm_head + ``symmpo_loss`` with ``logits_path=True``; DPO and mDPO score sequences with
``sequence_logps_from_hidden`` and apply ``dpo_loss`` / ``mdpo_loss``.
"""

from __future__ import annotations

import torch

from symmpo import (
    SymMPOConfig,
    dpo_loss,
    mdpo_loss,
    sequence_logps,
    sequence_logps_from_hidden,
    symmpo_loss,
    symmpo_loss_from_hidden,
)

from .model import naive_forward, unwrap
from .shared_prefix import shared_forward

FORWARDS = {"naive": naive_forward, "shared": shared_forward}

LOSSES = ("symmpo", "dpo", "mdpo")


def compute_loss(model, batch: dict, ref_logps: torch.Tensor, loss: str, config: SymMPOConfig,
                 logits_path: bool = False, forward=naive_forward):  # fmt: skip
    """The loss output (``.loss`` differentiable, ``.metrics()``) of one batch."""
    hidden, labels = forward(model, batch)
    lm_head = unwrap(model).lm_head
    ref_logps = ref_logps.to(hidden.device)
    if loss == "symmpo":
        if logits_path:
            return symmpo_loss(lm_head(hidden), labels, ref_logps, config=config)
        return symmpo_loss_from_hidden(
            hidden, lm_head.weight, labels, ref_logps, bias=lm_head.bias, config=config
        )
    if logits_path:
        logps = sequence_logps(lm_head(hidden), labels, average=config.average_log_prob)
    else:
        logps = sequence_logps_from_hidden(
            hidden, lm_head.weight, labels, bias=lm_head.bias, average=config.average_log_prob
        )
    if loss == "dpo":
        return dpo_loss(logps, ref_logps, beta=config.beta)
    if loss == "mdpo":
        return mdpo_loss(logps, ref_logps, beta=config.beta)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


@torch.no_grad()
def score_batch(
    model, batch: dict, average: bool, forward=naive_forward, logits_path: bool = False
) -> torch.Tensor:
    """(K*B,) float32 sequence log-probs of a batch, no gradient (reference scoring, eval)."""
    hidden, labels = forward(model, batch)
    lm_head = unwrap(model).lm_head
    if logits_path:  # through lm_head's forward (DeepSpeed ZeRO-3 gathers its weight there)
        return sequence_logps(lm_head(hidden), labels, average=average, allow_empty=True)
    return sequence_logps_from_hidden(
        hidden, lm_head.weight, labels, bias=lm_head.bias, average=average, allow_empty=True
    )
