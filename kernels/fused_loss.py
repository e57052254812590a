"""The fused logits -> SymMPO loss path: one autograd Function, no autograd graph inside.

Forward: the log-prob kernel (logprobs.py) sums each sequence's target log-probs and saves the
float32 logsumexp of each position; the terms kernel (symmpo_terms.py) turns the sums into the
loss, its terms, dL/ds_k and the batch metrics. Backward: one launch of the log-prob backward
kernel writes dL/dlogits = g_k (onehot - softmax) at the targets and zeros elsewhere. The math:
docs/math.md#the-loss and docs/math.md#gradients; the bytes it moves against the floor:
docs/math.md#hardware-floor.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .launch import guard_inplace_backward
from .logprobs import logprobs_backward, logprobs_forward
from .symmpo_terms import FLAG_NAMES, NUM_KINDS, TermsResult, terms_and_summary


def zeroed_workspace(rows: int, device) -> torch.Tensor:
    """One int32 buffer, zeroed in one memset, for the forward's flags (3), counts (rows) and
    float32 sums (rows, the same bits as int32 zeros): ``split_workspace`` gives the views."""
    return torch.zeros(len(FLAG_NAMES) + 2 * rows, dtype=torch.int32, device=device)


def split_workspace(workspace: torch.Tensor, rows: int):
    """(flags (3,) int32, counts (rows,) int32, sums (rows,) float32) views of the workspace."""
    n = len(FLAG_NAMES)
    return workspace[:n], workspace[n : n + rows], workspace[n + rows :].view(torch.float32)


def fused_forward(
    logits, labels, ref_logps, weights, average, ignore_index, allow_empty, check_ref, workspace
) -> tuple[TermsResult, torch.Tensor]:
    """The forward's two launches into a zeroed ``workspace``: (TermsResult, lse (5B*T,))."""
    rows = logits.shape[0]
    flags, counts, sums = split_workspace(workspace, rows)
    _, _, lse = logprobs_forward(
        logits, labels, ignore_index, bad_labels=flags, zeroed=(sums, counts)
    )
    batch = rows // NUM_KINDS
    result = terms_and_summary(
        sums.view(NUM_KINDS, batch),
        ref_logps.view(NUM_KINDS, batch),
        weights,
        counts=counts.view(NUM_KINDS, batch),
        average=average,
        flags=flags,
        poison=(allow_empty, check_ref),
    )
    return result, lse


class FusedSymMPOLoss(torch.autograd.Function):
    """Kind-major (5B, T, V) logits -> the SymMPO batch-mean loss, with no autograd graph inside.

    Forward, two kernels after one memset (flags, sums, counts): the log-prob kernel (saving
    4 bytes of LSE per position and counting bad labels), then the terms kernel (per-example
    outputs, dL/ds, batch means, validation flags). Backward, one launch: the log-prob backward
    kernel with g = dL/ds * grad_output (/ count when averaged) folded in, writing dL/dlogits
    once.
    Outputs: the TermsResult fields, of which only ``mean_loss`` is differentiable. Labels
    outside the vocabulary are skipped by the kernels (never read through) and counted in
    ``flags``; when the flags mark the input invalid (``allow_empty``, ``check_ref``: see
    terms_and_summary's ``poison``) every output and the internal dL/ds are NaN. The caller
    reads ``flags`` (one sync) to raise a clear error: after the forward, or through
    ``check(flags)``, which the backward calls right before its kernel's launch (so that the
    gradient is never written for invalid input, inplace_grad's logits stay intact, and the
    GPU idles only for one launch's latency).

    With ``inplace_grad`` the gradient overwrites the logits buffer: the logits are gone after
    backward, so nothing else may read them later (another loss, a second backward, logging).
    """

    @staticmethod
    def forward(
        ctx,
        logits,
        labels,
        ref_logps,
        weights,
        average,
        ignore_index,
        inplace_grad,
        allow_empty=False,
        check_ref=True,
        check=None,
    ):
        ctx.set_materialize_grads(False)
        workspace = zeroed_workspace(logits.shape[0], logits.device)
        result, lse = fused_forward(
            logits,
            labels,
            ref_logps,
            weights,
            average,
            ignore_index,
            allow_empty,
            check_ref,
            workspace,
        )
        flags, counts, _ = split_workspace(workspace, logits.shape[0])
        ctx.save_for_backward(logits, labels, lse, counts, result.grad)
        ctx.average, ctx.ignore_index, ctx.inplace_grad = average, ignore_index, inplace_grad
        ctx.check, ctx.flags = check, flags
        ctx.mark_non_differentiable(*result[:-2], result.flags)
        return result

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        grad_loss = grads[TermsResult._fields.index("mean_loss")]
        logits, labels, lse, counts, grad_logps = ctx.saved_tensors

        def before_launch():
            if ctx.check is not None:  # may raise: then the logits are not consumed
                ctx.check(ctx.flags)
            guard_inplace_backward(ctx)

        grad = logprobs_backward(
            logits,
            labels,
            lse,
            grad_logps.view(-1),
            ctx.ignore_index,
            ctx.inplace_grad,
            grad_scale=grad_loss,
            counts=counts if ctx.average else None,
            before_launch=before_launch,
        )
        return grad, None, None, None, None, None, None, None, None, None
