"""SymMPO straight from the last hidden states: target positions only, no (N, V) logits tensor.

The algorithm, for hidden (5B, T, H), lm_head weight W (V, H) and P target positions:

1. Select the positions whose next label is a target, ordered by example, before any matmul.
2. Cut them into chunks of whole examples (all five sequences of each), each chunk's logits
   within ``chunk_bytes``. For each chunk c of n_c positions:
       logits_c = h_c W^T + b                 (n_c, V)   2 n_c H V FLOPs
       lse, log-prob sums of its sequences     (the token kernel reads logits_c once)
       the SymMPO terms of its examples and dL/ds of their sequences (complete: whole examples)
       grad_logits_c = g (onehot - softmax)    written over logits_c (read once, write once)
       grad_h_c = grad_logits_c W              2 n_c H V FLOPs, scattered into grad_hidden
       grad_W  += grad_logits_c^T h_c          2 n_c H V FLOPs (accumulated in grad_W's dtype)
3. Backward only scales the gradients already computed by grad_output: the target rows of
   grad_hidden (P x H) and all of grad_weight and grad_bias (a pass over |W| for full
   fine-tuning; nothing more under LoRA, whose lm_head is frozen). Checking grad_output == 1
   to skip it would be a host sync.

Host syncs: none when the labels are on the host (as a data loader yields them): the chunks
are planned there (``fused_linear_chunks.plan_chunks``) and the plan is copied asynchronously.
Labels on the GPU are copied to the host once. The reference's finiteness is checked on the
device and read where the caller next looks (``out.metrics()``, ``out.raise_if_invalid()``).

Why gradients in the forward pass (6 P H V FLOPs) rather than recomputing the chunk logits in
backward (8 P H V): the batch-mean loss is a sum over examples, so a chunk that holds whole
examples knows its examples' loss and dL/ds as soon as its own logits are scored; its gradient
needs nothing from other chunks. That saves a quarter of the matmul work and any per-position
state between the passes. The price: a chunk holds at least one whole example (5 responses,
about 1000 positions x 32064 x 2 bytes = 64 MB at LLaVA shapes), and the gradients exist from
the forward on (they are needed in backward anyway).

Memory beyond inputs and gradients: one logits chunk (the gradient is written over it), the
gathered h_c and grad_h_c (n_c x H each), and 4 bytes per position.

This module holds the public functions and their autograd Functions; the planning and the
per-chunk work are in ``symmpo.fused_linear_chunks``. The math: docs/math.md#the-loss and
docs/math.md#gradients (the hidden-state gradients at its end); the 6 P H V FLOP floor:
docs/math.md#hardware-floor.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .config import SymMPOConfig, resolve_config

# The chunk machinery lives in fused_linear_chunks; its names stay importable from here.
from .fused_linear_chunks import TORCH_ROW_BLOCK as TORCH_ROW_BLOCK
from .fused_linear_chunks import ChunkPlan as ChunkPlan
from .fused_linear_chunks import ChunkResult as ChunkResult
from .fused_linear_chunks import _chunk_loop as _chunk_loop
from .fused_linear_chunks import (
    _chunk_ops,
    _linear,
    host_labels,
    plan_chunks,
    run_chunks,
    score_hidden,
    to_device,
)
from .fused_linear_chunks import _TorchChunkOps as _TorchChunkOps
from .fused_linear_chunks import _TritonChunkOps as _TritonChunkOps
from .fused_linear_chunks import compute_dtype as compute_dtype
from .implementations import resolve_impl
from .output import SymMPOOutput, build_symmpo_output
from .validation import (
    check_labels,
    check_logps,
    check_same_device,
    check_sequences,
    check_values,
    raise_invalid_values,
    require_tensor,
)

#: Default budget for one chunk's logits: 256 MiB (4 LLaVA examples of 5 x 200 targets in bf16).
DEFAULT_CHUNK_BYTES = 256 * 2**20


def symmpo_loss_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ref_logps: torch.Tensor | None = None,
    *,
    bias: torch.Tensor | None = None,
    ref_hidden: torch.Tensor | None = None,
    ref_weight: torch.Tensor | None = None,
    ref_bias: torch.Tensor | None = None,
    config: SymMPOConfig | None = None,
    impl: str = "auto",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    immediate_checks: bool = False,
    **overrides,
) -> SymMPOOutput:
    """SymMPO loss from last hidden states and the lm_head, without materialising the logits.

    Args:
        hidden: (5B, T, H) or (5, B, T, H) last hidden states, kind-major like ``symmpo_loss``.
        weight: (V, H) lm_head weight, same dtype as ``hidden``; ``bias``: optional (V,).
        labels: (5B, T) or (5, B, T) integer labels aligned with input_ids, on the hidden
            states' device or on the host (the CPU): see "Host syncs" below.
        ref_logps: (5B,) or (5, B) reference log-probs, or
        ref_hidden: reference hidden states shaped like ``hidden``, scored without gradient
            through ``ref_weight`` (default ``weight``) and ``ref_bias`` (default ``bias``).
        config / overrides: as for ``symmpo_loss``.
        impl: "auto" (Triton kernels on CUDA, torch otherwise), "triton", "torch".
        chunk_bytes: budget for one chunk's logits (positions x V x element size); a chunk
            always holds at least one whole example.
        immediate_checks: check the reference's finiteness at the call (one sync) instead of
            where the caller next looks.

    Gradients flow into hidden (zero at non-target positions), weight and bias; they are
    computed during the forward pass (see the module docstring).

    Host syncs: the target positions and the chunks are planned on the host. With labels on
    the host, forward and backward make no host sync; labels on the GPU cost one (their copy
    to the host). Bad labels (outside the vocabulary, a sequence without a target unless
    allow_empty) raise ValueError at the call. Reference log-probs, given or scored from
    ``ref_hidden``, must be finite: a non-finite one makes the loss, its terms, the policy
    log-probs and the gradients at the target positions NaN, and the ValueError naming it is
    raised where the caller next looks: ``out.metrics()`` or ``out.raise_if_invalid()`` (one
    sync, which a trainer already makes to log).

    One backward per call: backward scales the gradients computed in the forward in place,
    so a second backward through a retained graph raises RuntimeError (compute the loss again).
    """
    config = resolve_config(config, overrides)
    hidden = check_sequences("hidden", hidden, feature="H")
    rows, seq_len, hidden_size = hidden.shape
    weight = _check_weight("weight", weight, hidden)
    vocab = weight.shape[0]
    bias = _check_bias("bias", bias, weight)
    labels = check_labels(labels, rows, seq_len, vocab, config.ignore_index)
    if (ref_logps is None) == (ref_hidden is None):
        raise ValueError(
            "pass exactly one reference: ref_logps (5B,) precomputed log-probs or ref_hidden "
            "shaped like hidden"
        )
    if ref_hidden is not None:
        ref_hidden = check_sequences("ref_hidden", ref_hidden, feature="H")
        if ref_hidden.shape != hidden.shape:
            raise ValueError(
                f"ref_hidden of shape {tuple(ref_hidden.shape)} must match hidden, "
                f"expected {tuple(hidden.shape)}"
            )
        if ref_weight is None:
            ref_weight, ref_bias = weight, bias if ref_bias is None else ref_bias
        ref_weight = _check_weight("ref_weight", ref_weight, ref_hidden)
        if ref_weight.shape != weight.shape:
            raise ValueError(
                f"ref_weight of shape {tuple(ref_weight.shape)} must match weight, "
                f"expected {tuple(weight.shape)}"
            )
        ref_bias = _check_bias("ref_bias", ref_bias, ref_weight)
    else:
        ref_logps = check_logps("ref_logps", ref_logps, rows=rows, finite=False)
    if not isinstance(chunk_bytes, int) or isinstance(chunk_bytes, bool) or chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be a positive int, got {chunk_bytes!r}")
    check_same_device(
        hidden=hidden,
        weight=weight,
        bias=bias,
        ref_logps=ref_logps,
        ref_hidden=ref_hidden,
        ref_weight=ref_weight,
        ref_bias=ref_bias,
    )
    labels = host_labels(labels, hidden.device)
    check_values(labels, vocab, config.ignore_index, config.allow_empty)  # on the host
    impl = resolve_impl(impl, hidden)

    row_bytes = vocab * hidden.element_size()
    plan = plan_chunks(labels, config.ignore_index, row_bytes, chunk_bytes, hidden.device)
    given = ref_logps
    if ref_hidden is not None:
        ref_logps = score_hidden(ref_hidden, ref_weight, ref_bias, plan, config, impl)
    ref_logps = ref_logps.detach().reshape(5, -1).float()
    invalid = ~torch.isfinite(ref_logps).all()  # read by the caller: no sync here
    flags = invalid.int().reshape(1)

    def raise_if_invalid(flags: torch.Tensor) -> None:
        if any(flags.tolist()):
            raise_invalid_values(
                labels,
                vocab,
                config.ignore_index,
                config.allow_empty,
                scored=None if ref_hidden is None else ("ref_hidden", ref_logps),
                ref_logps=given,
            )

    if immediate_checks:
        raise_if_invalid(flags)
    wants_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias)
    )
    if wants_grad:
        loss, per_example, terms, z, policy = _FusedLinearSymMPO.apply(
            hidden, weight, bias, ref_logps, plan, config, impl, invalid
        )
    else:
        result = run_chunks(hidden, weight, bias, ref_logps, plan, config, impl, (False,) * 3)
        loss, per_example, terms, z, policy = poison(result.outputs, invalid)
    out = build_symmpo_output(loss, per_example, terms, z, policy, ref_logps, config)
    if not immediate_checks:
        out.flags, out.on_invalid = flags, raise_if_invalid
    return out


def sequence_logps_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    average: bool = False,
    ignore_index: int = -100,
    allow_empty: bool = False,
    impl: str = "auto",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> torch.Tensor:
    """(N,) float32 sequence log-probs from hidden (N, T, H) and lm_head (V, H), logits computed
    only at the P target positions: any loss on sequence log-probs (DPO, mDPO) can use it.

    Without gradient (reference scoring) the positions go through in chunks of ``chunk_bytes``
    of logits, so no (P, V) tensor exists. With gradient the (P, V) target logits are kept for
    backward (the loss is unknown here, so the in-forward gradient of
    ``symmpo_loss_from_hidden`` is not available); their gradient is written over them.
    Labels may be on the host, as for ``symmpo_loss_from_hidden``: then no host sync.
    """
    hidden = check_sequences("hidden", hidden, kind_major=False, feature="H")
    rows, seq_len, _ = hidden.shape
    weight = _check_weight("weight", weight, hidden)
    bias = _check_bias("bias", bias, weight)
    labels = check_labels(labels, rows, seq_len, weight.shape[0], ignore_index, kind_major=False)
    check_same_device(hidden=hidden, weight=weight, bias=bias)
    labels = host_labels(labels, hidden.device)
    check_values(labels, weight.shape[0], ignore_index, allow_empty, kind_major=False)
    impl = resolve_impl(impl, hidden)
    is_target = labels[:, 1:] != ignore_index
    pos_rows, pos_cols = is_target.nonzero(as_tuple=True)
    positions = (pos_rows, pos_cols, labels[pos_rows, pos_cols + 1], is_target.sum(-1))
    pos_rows, pos_cols, targets, counts = to_device(positions, hidden.device)
    sums = torch.zeros(rows, dtype=torch.float32, device=hidden.device)
    ops = _chunk_ops(impl)
    wants_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias)
    )
    if wants_grad:
        logits = _linear(hidden[pos_rows, pos_cols], weight, bias)
        sums = sums.index_add(0, pos_rows, _TokenLogps.apply(logits, targets, impl))
    else:
        step = max(1, chunk_bytes // (weight.shape[0] * hidden.element_size()))
        with torch.no_grad():
            for p0 in range(0, pos_rows.numel(), step):
                r, c = pos_rows[p0 : p0 + step], pos_cols[p0 : p0 + step]
                ops.forward(_linear(hidden[r, c], weight, bias), targets[p0 : p0 + step], r, sums)
    if average:
        sums = sums / counts.clamp(min=1)
    return sums


class _TokenLogps(torch.autograd.Function):
    """(P, V) logits, (P,) targets -> (P,) float32 log-probs; backward overwrites the saved
    logits with their gradient (they are this function's private intermediate)."""

    @staticmethod
    def forward(ctx, logits, targets, impl):
        token_logps = torch.zeros(logits.shape[0], dtype=torch.float32, device=logits.device)
        positions = torch.arange(logits.shape[0], device=logits.device)
        lse = _chunk_ops(impl).forward(logits, targets, positions, token_logps)
        ctx.save_for_backward(logits, targets, lse)
        ctx.impl = impl
        return token_logps

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_tokens):
        if getattr(ctx, "logits_consumed", False):  # the saved logits hold the gradient now
            raise RuntimeError(
                "sequence_logps_from_hidden: a second backward through the same graph is not "
                "supported (the first overwrote its target logits); recompute the log-probs"
            )
        ctx.logits_consumed = True
        logits, targets, lse = ctx.saved_tensors
        grad = _chunk_ops(ctx.impl).backward(logits, targets, lse, grad_tokens.float().contiguous())
        return grad, None, None


def poison(tensors, invalid: torch.Tensor):
    """The tensors, all NaN where ``invalid`` (a 0-dim bool on their device), with no sync."""
    return tuple(torch.where(invalid, torch.nan, t) for t in tensors)


class _FusedLinearSymMPO(torch.autograd.Function):
    """Forward runs every chunk and keeps the gradients; backward scales them by grad_output
    in place, in float32 (grad_hidden at the plan's target rows only: it is zero elsewhere),
    and hands them back, so a second backward through the same graph is refused.
    ``invalid`` (0-dim bool: a non-finite reference) makes the outputs and the gradients'
    target rows NaN."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, ref_logps, plan, config, impl, invalid):
        result = run_chunks(
            hidden, weight, bias, ref_logps, plan, config, impl, ctx.needs_input_grad[:3]
        )
        ctx.save_for_backward(*result.grads, plan.rows, plan.cols, invalid)
        outputs = poison(result.outputs, invalid)
        ctx.mark_non_differentiable(*outputs[1:])
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, *_unused):
        if getattr(ctx, "gradients_consumed", False):
            raise RuntimeError(
                "symmpo_loss_from_hidden: a second backward through the same graph is not "
                "supported (the first scaled the gradients computed in the forward in place); "
                "compute the loss again"
            )
        ctx.gradients_consumed = True
        grad_hidden, grad_weight, grad_bias, rows, cols, invalid = ctx.saved_tensors
        scale = poison([grad_loss.float()], invalid)[0]  # float32: a loss scale of 2^16
        if grad_hidden is not None:  # overflows float16, and 1/3 rounds in bfloat16
            scaled = grad_hidden[rows, cols].float() * scale
            grad_hidden.index_put_((rows, cols), scaled.to(grad_hidden.dtype))
        for grad in (grad_weight, grad_bias):
            if grad is not None:
                scale_in_float32(grad, scale)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None


def scale_in_float32(grad: torch.Tensor, scale: torch.Tensor, rows: int = 4096) -> None:
    """grad *= scale (a float32 0-dim tensor), computed in float32: in place for float32,
    else a block of ``rows`` rows at a time (a float32 copy of one block at most)."""
    if grad.dtype == torch.float32:
        grad.mul_(scale)
        return
    for block in grad.split(rows):
        block.copy_(block.float() * scale)


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _check_weight(name: str, weight, hidden: torch.Tensor) -> torch.Tensor:
    require_tensor(name, weight)
    hidden_size = hidden.shape[-1]
    if weight.dim() != 2 or weight.shape[1] != hidden_size or weight.shape[0] == 0:
        raise ValueError(
            f"{name} must have shape (V, H) with H = {hidden_size} (the hidden size), "
            f"got {tuple(weight.shape)}"
        )
    if weight.dtype != hidden.dtype and not torch.is_autocast_enabled(hidden.device.type):
        raise TypeError(
            f"{name} has dtype {weight.dtype} but the hidden states are {hidden.dtype}; "
            f"they must match (cast one, e.g. weight.to({hidden.dtype}))"
        )
    return weight


def _check_bias(name: str, bias, weight: torch.Tensor):
    if bias is None:
        return None
    require_tensor(name, bias)
    if tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{name} must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if bias.dtype != weight.dtype:
        raise TypeError(f"{name} has dtype {bias.dtype}, expected {weight.dtype} like the weight")
    return bias
