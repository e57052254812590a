"""symmpo: fused, exact SymMPO (Symmetric Multimodal Preference Optimization) losses.

from symmpo import symmpo_loss
out = symmpo_loss(logits, labels, ref_logps)   # logits (5B, T, V), kind-major
out.loss.backward()

The loss, its defaults and its gradients: docs/math.md.
"""

from .config import SymMPOConfig
from .fused_linear import sequence_logps_from_hidden, symmpo_loss_from_hidden
from .loss import dpo_loss, mdpo_loss, sequence_logps, symmpo_loss, symmpo_loss_from_logps
from .output import PreferenceOutput, SymMPOOutput
from .reference import KIND_NAMES

__version__ = "0.1.0"

__all__ = [
    "KIND_NAMES",
    "PreferenceOutput",
    "SymMPOConfig",
    "SymMPOOutput",
    "dpo_loss",
    "mdpo_loss",
    "sequence_logps",
    "sequence_logps_from_hidden",
    "symmpo_loss",
    "symmpo_loss_from_hidden",
    "symmpo_loss_from_logps",
]
