"""symmpo_kernels: Triton kernels of the SymMPO logits path (installed under this name).

Set TRITON_INTERPRET=1 before importing this package to run the kernels on CPU tensors.
"""

from .custom_ops import fused_loss_result
from .fused_loss import FusedSymMPOLoss
from .launch import block_config, check_launchable, interpreter_enabled
from .logprobs import SequenceLogps, logprobs_backward, logprobs_forward
from .symmpo_terms import (
    FLAG_NAMES,
    SUMMARY_NAMES,
    TermsResult,
    symmpo_terms_forward,
    terms_and_summary,
)
from .token_logprobs import token_logprobs_backward, token_logprobs_forward

__all__ = [
    "FLAG_NAMES",
    "SUMMARY_NAMES",
    "FusedSymMPOLoss",
    "TermsResult",
    "SequenceLogps",
    "block_config",
    "fused_loss_result",
    "check_launchable",
    "interpreter_enabled",
    "logprobs_backward",
    "logprobs_forward",
    "symmpo_terms_forward",
    "terms_and_summary",
    "token_logprobs_backward",
    "token_logprobs_forward",
]
