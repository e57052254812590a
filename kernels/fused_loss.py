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


class FusedSymMPOLoss(torch.autograd.Function):
    """Kind-major (5B, T, V) logits -> the SymMPO batch-mean loss, with no autograd graph inside.

    Forward, two kernels after three memsets (flags, sums, counts): the log-prob kernel (saving
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
        flags = torch.zeros(len(FLAG_NAMES), dtype=torch.int32, device=logits.device)
        sums, counts, lse = logprobs_forward(logits, labels, ignore_index, bad_labels=flags)
        batch = logits.shape[0] // NUM_KINDS
        result = terms_and_summary(
            sums.view(NUM_KINDS, batch),
            ref_logps.view(NUM_KINDS, batch),
            weights,
            counts=counts.view(NUM_KINDS, batch),
            average=average,
            flags=flags,
            poison=(allow_empty, check_ref),
        )
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
