"""Options of the SymMPO objective: one frozen dataclass travels through every implementation.

What each option means and where its default comes from: docs/math.md#defaults.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

import torch

#: The float options and the bound each must satisfy (beta_contrast may also be None).
_FLOAT_OPTIONS = (
    ("beta", "> 0"),
    ("beta_contrast", "> 0"),
    ("pair_weight", ">= 0"),
    ("margin_weight", ">= 0"),
    ("anchor_weight", ">= 0"),
    ("delta", ""),
)


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
    no target token score 0 instead of raising. The float options take any real number (a
    Python int or float, a NumPy scalar, a 0-d tensor) and are stored as Python floats.
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
        for name, bound in _FLOAT_OPTIONS:
            value = getattr(self, name)
            if value is not None or name != "beta_contrast":
                value = real_option(f"SymMPOConfig.{name}", value, bound)
                object.__setattr__(self, name, value)
        ignore_index = self.ignore_index
        if not isinstance(ignore_index, numbers.Integral) or isinstance(ignore_index, bool):
            raise TypeError(f"SymMPOConfig.ignore_index must be an int, got {ignore_index!r}")
        object.__setattr__(self, "ignore_index", int(ignore_index))
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
        config = DEFAULT_CONFIG
    elif not isinstance(config, SymMPOConfig):
        raise TypeError(f"config must be a SymMPOConfig or None, got {type(config).__name__}")
    return config.replace(**overrides)


def real_option(name: str, value, bound: str = "") -> float:
    """``value`` as a Python float: an int, a float, a NumPy real scalar or a 0-d real tensor
    (on any device: a CUDA tensor costs a sync), finite and satisfying ``bound`` ("> 0",
    ">= 0" or "" for none); anything else (NaN, inf, a bool, a string, a tensor of another
    shape) raises ValueError naming ``name``."""
    number = _as_float(value)
    if (
        number is None
        or not math.isfinite(number)
        or (bound == "> 0" and number <= 0)
        or (bound == ">= 0" and number < 0)
    ):
        shown = repr(value)
        if _is_array(value):  # a 0-d tensor or array holds one number; this one does not
            kind = "a tensor" if isinstance(value, torch.Tensor) else "an array"
            shown = f"{kind} of shape {tuple(value.shape)}"
        raise ValueError(
            f"{name} must be a finite number{' ' + bound if bound else ''}, got {shown}"
        )
    return number


def _as_float(value) -> float | None:
    """The float of a real number or 0-d real tensor; None for bools and anything else."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.dtype == torch.bool or value.is_complex():
            return None
        value = value.item()
    elif type(value).__module__ == "numpy" and getattr(value, "shape", None) == ():
        if getattr(value.dtype, "kind", "") not in "fiu":  # a 0-d array: not bool or complex
            return None
        value = value.item()
    # NumPy's floating and integer scalars register as numbers.Real, its bool_ does not.
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond the float range
        return math.inf


def _is_array(value) -> bool:
    """A tensor or NumPy array with a shape other than () (its repr could be huge)."""
    return bool(getattr(value, "shape", ())) and hasattr(value, "dtype")


#: The defaults, built once (the dataclass is frozen): a call without a config reuses it.
DEFAULT_CONFIG = SymMPOConfig()
