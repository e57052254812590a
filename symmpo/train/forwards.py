"""The policy's forward routes (``--forward``) and sequence scoring without gradient.

A route takes a LLaVA model (peft-wrapped or not) and a batch of ``PreferenceCollator`` and
returns ``(hidden, labels)``: the last hidden states of every sequence (on the model's device)
and the labels aligned with them on the host, ready for ``symmpo_loss_from_hidden`` (which
plans its target positions there without a sync).

- ``naive``: one pass over all K*B sequences (``symmpo.train.model.naive_forward``);
- ``shared``: each (image, question) prefix once and the responses as its continuations
  (``symmpo.train.shared_prefix.shared_forward``).
"""

from __future__ import annotations

import torch

from symmpo import sequence_logps, sequence_logps_from_hidden

from .model import naive_forward, unwrap
from .shared_prefix import shared_forward

FORWARDS = {"naive": naive_forward, "shared": shared_forward}


@torch.no_grad()
def score_batch(
    model, batch: dict, average: bool, forward=naive_forward, logits_path: bool = False
) -> torch.Tensor:
    """(K*B,) float32 sequence log-probs of a batch, no gradient (reference scoring, eval)."""
    hidden, labels = forward(model, batch)
    lm_head = unwrap(model).lm_head
    if logits_path:  # through lm_head's forward (DeepSpeed ZeRO-3 gathers its weight there)
        labels = labels.to(hidden.device)
        return sequence_logps(lm_head(hidden), labels, average=average, allow_empty=True)
    return sequence_logps_from_hidden(
        hidden, lm_head.weight, labels, bias=lm_head.bias, average=average, allow_empty=True
    )
