"""Result objects of the loss functions: a differentiable ``loss`` plus detached metrics
(docs/math.md#metrics: term means, rewards, the preferences' accuracies and margins)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .reference import symmpo_rewards


@dataclass
class SymMPOOutput:
    """What ``symmpo_loss`` and friends return.

    ``loss`` is the differentiable batch mean; every other tensor is detached. Term means are
    unweighted (``loss`` = dpo + pair_weight*pair + margin_weight*margin + anchor_weight*anchor).
    The three preferences are z_dpo = beta(r0 - r1) ("dpo": y_w over y_l on m),
    z_p1 = beta(r0 - r2) ("pair1": y_w over y_w' on m) and z_p2 = beta(r4 - r3) ("pair2": y_w'
    over y_w on m'); accuracy is the fraction with z > 0, reward margin the mean of z.
    """

    loss: torch.Tensor  # () differentiable
    per_example_loss: torch.Tensor  # (B,)
    dpo: torch.Tensor  # () mean of -log sig(z_dpo)
    pair: torch.Tensor  # () mean of -log sig(z_p1) - log sig(z_p2)
    margin: torch.Tensor  # () mean of mgn^2
    anchor: torch.Tensor  # () mean of -log sig(a1) - log sig(a2)
    policy_logps: torch.Tensor  # (5, B)
    ref_logps: torch.Tensor  # (5, B)
    rewards: torch.Tensor  # (5, B) beta r_k (beta_contrast for k = 3, 4)
    accuracy_dpo: torch.Tensor
    accuracy_pair1: torch.Tensor
    accuracy_pair2: torch.Tensor
    reward_margin_dpo: torch.Tensor
    reward_margin_pair1: torch.Tensor
    reward_margin_pair2: torch.Tensor
    #: The Triton path's validation flags (int32) and the function that raises the ValueError
    #: naming what they caught; None where the inputs were checked at the call.
    flags: torch.Tensor | None = field(default=None, repr=False)
    on_invalid: Callable[[torch.Tensor], None] | None = field(default=None, repr=False)

    def raise_if_invalid(self) -> None:
        """Raise the ValueError of invalid inputs the kernels flagged (one device sync); a
        no-op where the inputs were checked at the call."""
        if self.flags is not None and any(self.flags.tolist()):
            self.on_invalid(self.flags)

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Python floats for logging (one device sync); raises the ValueError of invalid
        inputs first (``raise_if_invalid``)."""
        names = (
            "loss",
            "dpo",
            "pair",
            "margin",
            "anchor",
            "accuracy_dpo",
            "accuracy_pair1",
            "accuracy_pair2",
            "reward_margin_dpo",
            "reward_margin_pair1",
            "reward_margin_pair2",
        )
        scalars = [getattr(self, n).detach().float().reshape(1) for n in names]
        rewards = self.rewards.detach().float().mean(-1)
        flags = [] if self.flags is None else [self.flags.float()]
        values = torch.cat([*scalars, rewards, *flags]).tolist()
        if flags and any(values[-len(self.flags) :]):
            self.on_invalid(self.flags)
        values = values[: len(names) + rewards.numel()]
        keys = [*names, *(f"reward_{k}" for k in range(rewards.numel()))]
        return {prefix + k: v for k, v in zip(keys, values, strict=True)}


@dataclass
class PreferenceOutput:
    """What ``dpo_loss`` and ``mdpo_loss`` return: the loss, its unweighted term means, the
    per-preference accuracy (z > 0) and reward margin (mean z), all but ``loss`` detached."""

    loss: torch.Tensor
    per_example_loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    accuracies: dict[str, torch.Tensor]
    reward_margins: dict[str, torch.Tensor]
    rewards: torch.Tensor  # (K, B) beta r_k

    def raise_if_invalid(self) -> None:
        """Nothing to do: these losses check their inputs at the call."""

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Python floats for logging: loss, each term, accuracy_* and reward_margin_*."""
        values = {"loss": self.loss.detach().float()}
        values.update({k: v.float() for k, v in self.terms.items()})
        values.update({f"accuracy_{k}": v for k, v in self.accuracies.items()})
        values.update({f"reward_margin_{k}": v for k, v in self.reward_margins.items()})
        floats = torch.stack(list(values.values())).tolist()
        return {prefix + k: v for k, v in zip(values, floats, strict=True)}


def build_symmpo_output(loss, per_example, terms, z, policy_logps, ref_logps, config):
    """A SymMPOOutput from the per-example results of any implementation.

    terms (4, B) = (dpo, pair, margin, anchor), z (3, B) = (z_dpo, z_p1, z_p2), logps (5, B).
    """
    policy_logps = policy_logps.detach()
    ref_logps = ref_logps.to(policy_logps.dtype)
    term_means = terms.mean(-1)
    accuracies = (z > 0).float().mean(-1)
    margins = z.mean(-1)
    return SymMPOOutput(
        loss=loss,
        per_example_loss=per_example,
        dpo=term_means[0],
        pair=term_means[1],
        margin=term_means[2],
        anchor=term_means[3],
        policy_logps=policy_logps,
        ref_logps=ref_logps,
        rewards=symmpo_rewards(policy_logps, ref_logps, config),
        accuracy_dpo=accuracies[0],
        accuracy_pair1=accuracies[1],
        accuracy_pair2=accuracies[2],
        reward_margin_dpo=margins[0],
        reward_margin_pair1=margins[1],
        reward_margin_pair2=margins[2],
    )


def output_from_terms(result, ref_logps: torch.Tensor, on_invalid=None) -> SymMPOOutput:
    """A SymMPOOutput from the fused path's TermsResult: its batch means are views of the
    kernel's summary vector, so building the output launches nothing. ``on_invalid``: the
    deferred check's raiser, given the kernel's flags (None: checked already)."""
    from symmpo_kernels import SUMMARY_NAMES

    means = dict(zip(SUMMARY_NAMES, result.summary.unbind(), strict=True))
    return SymMPOOutput(
        loss=result.mean_loss,
        per_example_loss=result.loss,
        dpo=means["dpo"],
        pair=means["pair"],
        margin=means["margin"],
        anchor=means["anchor"],
        policy_logps=result.policy,
        ref_logps=ref_logps,
        rewards=result.rewards,
        accuracy_dpo=means["accuracy_dpo"],
        accuracy_pair1=means["accuracy_pair1"],
        accuracy_pair2=means["accuracy_pair2"],
        reward_margin_dpo=means["reward_margin_dpo"],
        reward_margin_pair1=means["reward_margin_pair1"],
        reward_margin_pair2=means["reward_margin_pair2"],
        flags=None if on_invalid is None else result.flags,
        on_invalid=on_invalid,
    )
