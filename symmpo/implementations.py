"""Choosing and running an implementation of the logits path ("torch" or "triton")."""

from __future__ import annotations

import torch

from . import reference

IMPLS = ("auto", "triton", "torch")


def resolve_impl(impl: str, tensor: torch.Tensor) -> str:
    """ "auto" means Triton for CUDA tensors and torch otherwise; anything else is checked."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "triton" if tensor.is_cuda else "torch"
    return impl


def score_sequences(
    logits: torch.Tensor, labels: torch.Tensor, average: bool, ignore_index: int, impl: str
) -> torch.Tensor:
    """(N, T, V) logits, (N, T) int64 labels -> (N,) float32 log-probs; input already checked."""
    if impl == "triton":
        raise NotImplementedError(
            "impl='triton' needs the fused Triton kernels of symmpo_kernels, which have not "
            "landed yet; use impl='torch'"
        )
    return reference.sequence_logps(logits, labels, average, ignore_index)
