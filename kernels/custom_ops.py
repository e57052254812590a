"""The fused logits -> SymMPO loss path as ``torch.library`` custom ops.

``torch.ops.symmpo.fused_loss`` (forward) and ``torch.ops.symmpo.fused_loss_backward`` run the
same kernels as ``FusedSymMPOLoss`` (fused_loss.py), registered so that ``torch.compile``
(``fullgraph=True``) and CUDA graphs see one opaque op each with a fake (shape-only)
implementation and an autograd formula, instead of Python that launches Triton kernels:

    fused_loss(logits (5B, T, V), labels (5B, T), ref_logps (5B,) f32, weights [6], average,
               ignore_index, allow_empty, check_ref)
        -> policy (5, B), loss (B,), terms (4, B), z (3, B), grad (5, B), rewards (5, B),
           summary (16,), mean_loss (), workspace (3 + 10B,) int32, lse (5B*T,) f32
    fused_loss_backward(logits, labels, lse, grad (5B,), grad_scale (), counts (5B,) int32,
                        average, ignore_index) -> dL/dlogits, shaped and typed like logits

The workspace holds the validation flags, the target counts and the sums (``split_workspace``);
nothing in either op reads a value on the host, so a step that calls them never synchronises.
This route serves ``symmpo_loss``'s default (deferred checks, no ``inplace_grad``); the
in-place gradient and the immediate checks keep the autograd Function, whose backward may
raise before writing into the logits.
"""

from __future__ import annotations

import torch

from .fused_loss import fused_forward, split_workspace, zeroed_workspace
from .logprobs import logprobs_backward
from .symmpo_terms import FLAG_NAMES, NUM_KINDS, SUMMARY_NAMES, TermsResult

_OUTPUTS = ("policy", "loss", "terms", "z", "grad", "rewards", "summary", "mean_loss")


@torch.library.custom_op("symmpo::fused_loss", mutates_args=())
def fused_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ref_logps: torch.Tensor,
    weights: list[float],
    average: bool,
    ignore_index: int,
    allow_empty: bool,
    check_ref: bool,
) -> tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
]:
    workspace = zeroed_workspace(logits.shape[0], logits.device)
    result, lse = fused_forward(
        logits,
        labels,
        ref_logps,
        tuple(weights),
        average,
        ignore_index,
        allow_empty,
        check_ref,
        workspace,
    )
    return (*(getattr(result, name) for name in _OUTPUTS), workspace, lse)


@fused_loss.register_fake
def _(logits, labels, ref_logps, weights, average, ignore_index, allow_empty, check_ref):
    rows, seq_len, _ = logits.shape
    batch = rows // NUM_KINDS
    f32 = lambda *shape: logits.new_empty(shape, dtype=torch.float32)  # noqa: E731
    return (
        f32(NUM_KINDS, batch),
        f32(batch),
        f32(4, batch),
        f32(3, batch),
        f32(NUM_KINDS, batch),
        f32(NUM_KINDS, batch),
        f32(len(SUMMARY_NAMES)),
        f32(),
        logits.new_empty((len(FLAG_NAMES) + 2 * rows,), dtype=torch.int32),
        f32(rows * seq_len),
    )


@torch.library.custom_op("symmpo::fused_loss_backward", mutates_args=())
def fused_loss_backward(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    grad: torch.Tensor,
    grad_scale: torch.Tensor,
    counts: torch.Tensor,
    average: bool,
    ignore_index: int,
) -> torch.Tensor:
    return logprobs_backward(
        logits,
        labels,
        lse,
        grad,
        ignore_index,
        grad_scale=grad_scale.reshape(1),
        counts=counts if average else None,
    )


@fused_loss_backward.register_fake
def _(logits, labels, lse, grad, grad_scale, counts, average, ignore_index):
    return torch.empty_like(logits)


def _setup_context(ctx, inputs, output):
    logits, labels, _, _, average, ignore_index, _, _ = inputs
    grad, workspace, lse = output[_OUTPUTS.index("grad")], output[-2], output[-1]
    ctx.save_for_backward(logits, labels, lse, workspace, grad)
    ctx.average, ctx.ignore_index = average, ignore_index


def _backward(ctx, *grads):
    grad_loss = grads[_OUTPUTS.index("mean_loss")]
    logits, labels, lse, workspace, grad = ctx.saved_tensors
    if grad_loss is None:
        return (None,) * 8
    _, counts, _ = split_workspace(workspace, logits.shape[0])
    grad_logits = fused_loss_backward(
        logits, labels, lse, grad.reshape(-1), grad_loss, counts, ctx.average, ctx.ignore_index
    )
    return grad_logits, None, None, None, None, None, None, None


fused_loss.register_autograd(_backward, setup_context=_setup_context)


def fused_loss_result(
    logits, labels, ref_logps, weights, average, ignore_index, allow_empty, check_ref
) -> TermsResult:
    """``torch.ops.symmpo.fused_loss`` as a TermsResult (``flags`` a view of its workspace)."""
    outputs = fused_loss(
        logits,
        labels,
        ref_logps,
        list(weights),
        average,
        ignore_index,
        allow_empty,
        check_ref,
    )
    flags, _, _ = split_workspace(outputs[-2], logits.shape[0])
    return TermsResult(*outputs[: len(_OUTPUTS)], flags=flags)
