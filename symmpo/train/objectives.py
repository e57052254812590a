"""The training objectives as records: which sequences each needs, its loss, its held-out checks.

One ``Objective`` per ``--loss``. The trainer, the collator, the reference strategies and the
evaluation read these fields instead of comparing loss names:

- ``sequences``: the sequences of one example as (response, image slot), kind-major in this
  order. Slot 0 is the image m; slot 1 is the contrastive image m' (SymMPO) or mDPO's corrupted
  crop of m. Responses: ``chosen`` y_w, ``rejected`` y_l, ``contrast`` y_w'.
- ``second_image``: what slot 1 holds (``"contrast"``, ``"corrupted"``) or None.
- ``record_logps``: whether the released data's ``logps`` column (five reference sums in the
  order of docs/math.md#the-five-sequences) is this objective's reference: its first
  ``len(sequences)`` values are, unless slot 1 is an image the column never saw.
- ``comparisons``: held-out log-prob accuracies (metric name, winner kind, loser kind).
- ``loss(logps, ref_logps, config)`` from sequence log-probs; SymMPO also has the fused paths
  ``symmpo_loss_from_hidden`` / ``symmpo_loss`` (``fused``).

The loss formulas are in docs/math.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from symmpo import (
    SymMPOConfig,
    dpo_loss,
    mdpo_loss,
    sequence_logps,
    sequence_logps_from_hidden,
    symmpo_loss,
    symmpo_loss_from_hidden,
    symmpo_loss_from_logps,
)

from .forwards import FORWARDS
from .model import unwrap


@dataclass(frozen=True)
class Objective:
    name: str
    sequences: tuple[tuple[str, int], ...]
    second_image: str | None
    record_logps: bool
    comparisons: tuple[tuple[str, int, int], ...]
    loss: Callable  # (policy_logps (K*B,), ref_logps (K*B,), SymMPOConfig) -> output
    fused: bool = False  # the fused SymMPO paths apply (hidden states or logits to the loss)
    description: str = ""

    @property
    def num_sequences(self) -> int:
        return len(self.sequences)

    @property
    def num_images(self) -> int:
        return 1 + max(slot for _, slot in self.sequences)

    def reward_scales(self, config: SymMPOConfig) -> torch.Tensor:
        """(K, 1) beta of each sequence's implicit reward (beta_contrast for SymMPO's k = 3, 4)."""
        betas = [config.beta] * self.num_sequences
        if self.fused and config.beta_contrast is not None:
            betas[3:] = [config.beta_contrast] * (self.num_sequences - 3)
        return torch.tensor(betas, dtype=torch.float32).view(-1, 1)


SYMMPO = Objective(
    name="symmpo",
    sequences=(("chosen", 0), ("rejected", 0), ("contrast", 0), ("chosen", 1), ("contrast", 1)),
    second_image="contrast",
    record_logps=True,
    comparisons=(
        ("logp_accuracy", 0, 1),
        ("contrast_accuracy_m", 0, 2),
        ("contrast_accuracy_m_prime", 4, 3),
    ),
    loss=lambda logps, ref, config: symmpo_loss_from_logps(logps, ref, config),
    fused=True,
    description="SymMPO: five sequences, the contrastive image m' as the second image",
)
DPO = Objective(
    name="dpo",
    sequences=(("chosen", 0), ("rejected", 0)),
    second_image=None,
    record_logps=True,
    comparisons=(("logp_accuracy", 0, 1),),
    loss=lambda logps, ref, config: dpo_loss(logps, ref, beta=config.beta),
    description="DPO: sequences 0 and 1",
)
MDPO = Objective(
    name="mdpo",
    sequences=(("chosen", 0), ("rejected", 0), ("chosen", 1)),
    second_image="corrupted",
    record_logps=False,  # its third sequence is on a crop the released column never scored
    comparisons=(("logp_accuracy", 0, 1),),
    loss=lambda logps, ref, config: mdpo_loss(logps, ref, beta=config.beta),
    description="mDPO: adds y_w on a random resized crop of m keeping 1-20 % of its area",
)
OBJECTIVES = {o.name: o for o in (SYMMPO, DPO, MDPO)}


def get_objective(name: str | Objective) -> Objective:
    """The Objective of a ``--loss`` name (an Objective passes through)."""
    if isinstance(name, Objective):
        return name
    if name not in OBJECTIVES:
        raise ValueError(f"loss must be one of {sorted(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name]


def compute_loss(
    model,
    batch: dict,
    ref_logps: torch.Tensor,
    objective: str | Objective,
    config: SymMPOConfig,
    logits_path: bool = False,
    forward=FORWARDS["naive"],
):
    """The loss output (``.loss`` differentiable, ``.metrics()``) of one batch: the policy's
    last hidden states, then the fused SymMPO path, or sequence log-probs and the objective's
    loss. ``logits_path``: through lm_head's forward (full (K*B, T, V) logits)."""
    objective = get_objective(objective)
    lm_head = unwrap(model).lm_head
    # Before the forward: a copy from the host now waits for nothing queued.
    ref_logps = ref_logps.to(lm_head.weight.device, non_blocking=True)
    hidden, labels = forward(model, batch)
    average = config.average_log_prob
    if logits_path:  # the logits path wants its labels beside the logits
        labels = labels.to(hidden.device)
    if objective.fused and logits_path:
        return symmpo_loss(lm_head(hidden), labels, ref_logps, config=config)
    if objective.fused:
        return symmpo_loss_from_hidden(
            hidden, lm_head.weight, labels, ref_logps, bias=lm_head.bias, config=config
        )
    if logits_path:
        logps = sequence_logps(lm_head(hidden), labels, average=average)
    else:
        logps = sequence_logps_from_hidden(
            hidden, lm_head.weight, labels, bias=lm_head.bias, average=average
        )
    return objective.loss(logps, ref_logps, config)


class PolicyStep(torch.nn.Module):
    """The policy's loss on a batch as a module, so that under DDP its forward is the
    synchronised one: ``PolicyStep(model, objective, config, logits_path, forward)(batch,
    ref_logps)`` is ``compute_loss`` of those arguments."""

    def __init__(self, model, objective, config, logits_path: bool = False, forward=None):
        super().__init__()
        self.model = model
        self.objective = get_objective(objective)
        self.config, self.logits_path = config, logits_path
        self.forward_fn = forward or FORWARDS["naive"]

    def forward(self, batch: dict, ref_logps: torch.Tensor):
        return compute_loss(
            self.model,
            batch,
            ref_logps,
            self.objective,
            self.config,
            self.logits_path,
            forward=self.forward_fn,
        )
