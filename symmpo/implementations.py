"""Choosing and running an implementation of the logits path: "torch" (the eager reference) or
"triton" (symmpo_kernels, imported on first use so that symmpo imports without Triton)."""

from __future__ import annotations

import torch

from . import reference
from .config import SymMPOConfig

IMPLS = ("auto", "triton", "torch")


def resolve_impl(impl: str, tensor: torch.Tensor) -> str:
    """ "auto" means Triton for CUDA tensors and torch otherwise; anything else is checked."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "triton" if tensor.is_cuda else "torch"
    if impl == "triton":
        _kernels().check_launchable(tensor)
    return impl


def score_sequences(
    logits: torch.Tensor,
    labels: torch.Tensor,
    average: bool,
    ignore_index: int,
    impl: str,
    inplace_grad: bool = False,
) -> torch.Tensor:
    """(N, T, V) logits, (N, T) int64 labels -> (N,) float32 log-probs; input already checked."""
    if impl == "triton":
        return _kernels().SequenceLogps.apply(logits, labels, average, ignore_index, inplace_grad)
    return reference.sequence_logps(logits, labels, average, ignore_index)


@torch.no_grad()
def score_reference(
    logits: torch.Tensor, labels: torch.Tensor, average: bool, ignore_index: int, impl: str
) -> torch.Tensor:
    """Like score_sequences without gradient; the Triton path runs the forward kernel only."""
    if impl == "triton":
        sums, counts, _ = _kernels().logprobs_forward(logits, labels, ignore_index, store_lse=False)
        return sums / counts.clamp(min=1) if average else sums
    return reference.sequence_logps(logits, labels, average, ignore_index)


def fused_symmpo(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ref_logps: torch.Tensor,
    config: SymMPOConfig,
    inplace_grad: bool,
    check_ref: bool = True,
    check_in_backward=None,
):
    """The Triton path: a symmpo_kernels.TermsResult whose ``mean_loss`` is differentiable.
    Its ``flags`` are unread: the caller checks them (one sync). On input they mark invalid
    (bad labels; empty sequences unless config.allow_empty; non-finite ref_logps when
    ``check_ref``) every output is NaN. ``check_in_backward(flags)``, when given, runs in
    the backward right before its kernel's launch.

    Under torch.compile the custom ops (``torch.ops.symmpo.fused_loss``: one opaque node each,
    no graph break); eager calls take the autograd Function, which launches the same kernels
    with no host sync either (so a CUDA graph can capture it too) and costs the host about 120
    microseconds less a step than the custom ops' dispatch (measured with the kernels stubbed
    out: benchmarks/host_overhead.py; the floor of a training-shaped step at N = 2000
    targets and V = 32064 is about 0.2 ms on an H200)."""
    kernels = _kernels()
    # On the CPU (Triton's interpreter) the custom ops run only under torch.compile: the
    # interpreter inside the op dispatcher crashed a test process after some imports (a
    # segfault seen in CI), while the compiled-call test needs them.
    compiling = torch.compiler.is_compiling()
    if compiling and not inplace_grad and check_in_backward is None:
        return kernels.fused_loss_result(
            logits,
            labels,
            ref_logps.detach().float().reshape(-1),
            config.kernel_weights,
            config.average_log_prob,
            config.ignore_index,
            config.allow_empty,
            check_ref,
        )
    outputs = kernels.FusedSymMPOLoss.apply(
        logits,
        labels,
        ref_logps.detach().float().reshape(-1),
        config.kernel_weights,
        config.average_log_prob,
        config.ignore_index,
        inplace_grad,
        config.allow_empty,
        check_ref,
        check_in_backward,
    )
    return kernels.TermsResult(*outputs)


def _kernels():
    import symmpo_kernels

    return symmpo_kernels
