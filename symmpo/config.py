"""Options of the SymMPO objective: one frozen dataclass travels through every implementation.

What each option means and where its default comes from: docs/math.md#defaults.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SymMPOConfig:
    """Hyper-parameters of the SymMPO loss (docs/math.md#the-loss, docs/math.md#defaults).

    Defaults are the authors' released training code:

    ============== ======= ==================================================================
    field          default where it comes from
    ============== ======= ==================================================================
    beta           0.1     released code (``--beta``), the DPO temperature
    beta_contrast  None    released code uses beta for both images; None means "= beta"
    pair_weight    0.5     lambda in the paper; released code's default
    margin_weight  1e-4    gamma in the paper; hard-coded in the released code
    anchor_weight  1.0     eta in the paper; hard-coded in the released code
    delta          0.0     the paper's anchor offset; the released code has none
    ============== ======= ==================================================================

    ``average_log_prob`` divides each sequence log-prob by its number of target tokens;
    ``ignore_index`` marks labels that are not targets; ``allow_empty`` lets a sequence with
    no target token score 0 instead of raising.
    """

    beta: float = 0.1
    beta_contrast: float | None = None
    pair_weight: float = 0.5
    margin_weight: float = 1e-4
    anchor_weight: float = 1.0
    delta: float = 0.0
    average_log_prob: bool = False
    ignore_index: int = -100
    allow_empty: bool = False

    def __post_init__(self) -> None:
        positive = {"beta": self.beta}
        if self.beta_contrast is not None:
            positive["beta_contrast"] = self.beta_contrast
        for name, value in positive.items():
            if not _is_real(value) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"SymMPOConfig.{name} must be a finite number > 0, got {value!r}")
        for name in ("pair_weight", "margin_weight", "anchor_weight"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f"SymMPOConfig.{name} must be a finite number >= 0, got {value!r}")
        if not _is_real(self.delta) or not math.isfinite(self.delta):
            raise ValueError(f"SymMPOConfig.delta must be a finite number, got {self.delta!r}")
        if not isinstance(self.ignore_index, int) or isinstance(self.ignore_index, bool):
            raise TypeError(f"SymMPOConfig.ignore_index must be an int, got {self.ignore_index!r}")
        for name in ("average_log_prob", "allow_empty"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"SymMPOConfig.{name} must be a bool, got {getattr(self, name)!r}")

    @property
    def contrast_beta(self) -> float:
        """The temperature of the contrastive image's anchor (beta when beta_contrast is None)."""
        return self.beta if self.beta_contrast is None else self.beta_contrast

    @property
    def kernel_weights(self) -> tuple[float, float, float, float, float, float]:
        """(beta, beta_contrast, pair_weight, margin_weight, anchor_weight, delta): the scalar
        arguments of the terms kernel, in its order."""
        return (
            self.beta,
            self.contrast_beta,
            self.pair_weight,
            self.margin_weight,
            self.anchor_weight,
            self.delta,
        )

    def replace(self, **overrides) -> SymMPOConfig:
        """A copy with some fields changed; an unknown name raises TypeError naming it."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown SymMPO option(s) {unknown}; the options are {sorted(known)}")
        return dataclasses.replace(self, **overrides) if overrides else self


def resolve_config(config: SymMPOConfig | None, overrides: dict) -> SymMPOConfig:
    """``config`` (default ``SymMPOConfig()``) with keyword ``overrides`` applied."""
    if config is None:
        config = SymMPOConfig()
    elif not isinstance(config, SymMPOConfig):
        raise TypeError(f"config must be a SymMPOConfig or None, got {type(config).__name__}")
    return config.replace(**overrides)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
