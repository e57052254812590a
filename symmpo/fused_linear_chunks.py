"""The chunked computation behind ``symmpo.fused_linear``: which target positions, in which
chunks, and what happens to each chunk.

- Planning: ``plan_chunks`` selects the target positions, orders them by example and cuts them
  into chunks of whole examples (``ChunkPlan``), on the host: the labels are there (or are
  copied there once), so the per-chunk sizes the loop needs never wait for the GPU.
- The loop: ``run_chunks`` scores each chunk's logits, computes its examples' SymMPO terms and,
  when asked, the gradients of hidden, weight and bias (the algorithm of
  ``symmpo.fused_linear``'s module docstring); ``score_hidden`` scores a reference without
  gradient.
- Per-chunk operations: the Triton kernels (``_TritonChunkOps``) or the same algorithm in torch
  (``_TorchChunkOps``).

The math (log-probs, dL/ds_k, dL/dlogits and the hidden-state gradients) is in
docs/math.md#gradients; the FLOP count in docs/math.md#hardware-floor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import reference
from .implementations import _kernels

#: The torch path works through chunk rows in blocks of this many, bounding its float32 temps.
TORCH_ROW_BLOCK = 256


# --------------------------------------------------------------------------------------------
# Planning: which positions, in which chunks
# --------------------------------------------------------------------------------------------


@dataclass
class ChunkPlan:
    """Target positions ordered by example, and the chunks that cut them.

    rows, cols, targets: (P,) int64 on the compute device, position (rows[p], cols[p])
    predicts targets[p]; chunks: host list of (p0, p1, e0, e1): positions [p0, p1) are all
    those of examples [e0, e1); counts: (5B,) float32 targets per sequence; batch: B.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    targets: torch.Tensor
    counts: torch.Tensor
    chunks: list[tuple[int, int, int, int]]
    batch: int
    positions_per_chunk: int


def host_labels(labels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The labels on the host, where the chunks are planned: labels already on the CPU cost
    nothing; labels on ``device`` cost one copy, the one host sync of the hidden-state losses
    (pass them as the data loader yields them, on the host, to make none). Labels on a third
    device are refused."""
    if labels.device.type == "cpu":
        return labels
    if labels.device != device:
        raise ValueError(
            f"labels must be on the hidden states' device ({device}) or on the CPU, "
            f"got {labels.device}"
        )
    return labels.cpu()


def plan_chunks(
    labels, ignore_index: int, row_bytes: int, chunk_bytes: int, device=None
) -> ChunkPlan:
    """Select the target positions of host ``labels`` and cut them into chunks of whole
    examples whose logits (row_bytes per position) fit ``chunk_bytes``: host work only. The
    plan's tensors are copied to ``device`` (default: the labels') without waiting for it."""
    batch = labels.shape[0] // 5
    is_target = labels[:, 1:] != ignore_index
    rows, cols = is_target.nonzero(as_tuple=True)
    example = rows % batch
    order = torch.argsort(example, stable=True)
    rows, cols = rows[order], cols[order]
    sizes = torch.bincount(example, minlength=batch).tolist()
    budget = max(1, chunk_bytes // row_bytes)
    chunks, p0, e0, filled = [], 0, 0, 0
    for e, size in enumerate(sizes):
        if filled and filled + size > budget:
            chunks.append((p0, p0 + filled, e0, e))
            p0, e0, filled = p0 + filled, e, 0
        filled += size
    chunks.append((p0, p0 + filled, e0, batch))
    device = labels.device if device is None else torch.device(device)
    positions = (rows, cols, labels[rows, cols + 1], is_target.sum(-1))
    rows, cols, targets, counts = to_device(positions, device)
    return ChunkPlan(rows, cols, targets, counts.float(), chunks, batch, budget)


def to_device(tensors, device: torch.device) -> list[torch.Tensor]:
    """Host int64 tensors on ``device`` in one copy and without a host sync: packed into one
    pinned buffer, copied asynchronously, split there (a plain ``.to(device)`` from pageable
    memory waits for the GPU's queue)."""
    tensors = [t.reshape(-1) for t in tensors]
    if all(t.device == device for t in tensors):
        return tensors
    packed = torch.cat([t.to("cpu", torch.int64) for t in tensors])
    if device.type == "cuda":
        packed = packed.pin_memory()
    packed = packed.to(device, non_blocking=True)
    return list(packed.split([t.numel() for t in tensors]))


# --------------------------------------------------------------------------------------------
# The chunked computation
# --------------------------------------------------------------------------------------------


@dataclass
class ChunkResult:
    outputs: tuple  # loss (), per_example (B,), terms (4, B), z (3, B), policy (5, B)
    grads: tuple  # grad_hidden, grad_weight, grad_bias (None where not wanted)


def run_chunks(hidden, weight, bias, ref_logps, plan: ChunkPlan, config, impl, needs_grad):
    """The algorithm of ``symmpo.fused_linear``'s module docstring; ``needs_grad`` = (hidden,
    weight, bias)."""
    batch, device = plan.batch, hidden.device
    want_h, want_w, want_b = needs_grad
    f32 = dict(dtype=torch.float32, device=device)
    sums = torch.zeros(5 * batch, **f32)
    per_example = torch.empty(batch, **f32)
    terms, z = torch.empty(4, batch, **f32), torch.empty(3, batch, **f32)
    grad_seq = torch.zeros(5, batch, **f32)
    grad_hidden = torch.zeros_like(hidden) if want_h else None
    grad_weight = torch.zeros_like(weight) if want_w else None
    grad_bias = torch.zeros(weight.shape[0], **f32) if want_b else None
    counts = plan.counts.clamp(min=1).view(5, batch)
    ops = _chunk_ops(impl)
    # Under autocast the chunk matmuls run in the autocast dtype, as lm_head would; the
    # gradients are written back in their tensors' own dtypes.
    dtype = compute_dtype(hidden)
    with torch.autocast(device.type, enabled=False):
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        outputs = (sums, per_example, terms, z, grad_seq)
        grads = (grad_hidden, grad_weight, grad_bias)
        _chunk_loop(hidden, w, b, ref_logps, plan, config, ops, dtype, counts, outputs, grads)

    policy = sums.view(5, batch)
    if config.average_log_prob:
        policy = policy / counts
    loss = per_example.sum() / batch
    if grad_bias is not None:
        grad_bias = grad_bias.to(weight.dtype)
    return ChunkResult((loss, per_example, terms, z, policy), (grad_hidden, grad_weight, grad_bias))


def compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The autocast dtype where autocast is on for hidden's device, else hidden's dtype."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return hidden.dtype


def _chunk_loop(hidden, weight, bias, ref_logps, plan, config, ops, dtype, counts, outputs, grads):
    """Every chunk of ``run_chunks``: scores, terms, then the gradients (see
    ``symmpo.fused_linear``'s module docstring). Writes into ``outputs`` = (sums, per_example,
    terms, z, grad_seq) and ``grads`` = (grad_hidden, grad_weight, grad_bias), None where not
    wanted.

    grad_weight accumulates in its own dtype, one rounding per chunk (bf16 addmm_ accumulates
    each chunk's product in float32 inside the matmul).
    """
    sums, per_example, terms, z, grad_seq = outputs
    grad_hidden, grad_weight, grad_bias = grads
    batch = plan.batch
    for p0, p1, e0, e1 in plan.chunks:
        rows, cols, targets = plan.rows[p0:p1], plan.cols[p0:p1], plan.targets[p0:p1]
        h = hidden[rows, cols].to(dtype)
        logits = _linear(h, weight, bias)
        lse = ops.forward(logits, targets, rows, sums)
        policy = sums.view(5, batch)[:, e0:e1]
        if config.average_log_prob:
            policy = policy / counts[:, e0:e1]
        loss_c, terms_c, z_c, grad_c = ops.terms(policy, ref_logps[:, e0:e1], config, 1.0 / batch)
        per_example[e0:e1], terms[:, e0:e1], z[:, e0:e1] = loss_c, terms_c, z_c
        if grad_hidden is None and grad_weight is None and grad_bias is None:
            continue
        if config.average_log_prob:
            grad_c = grad_c / counts[:, e0:e1]
        grad_seq[:, e0:e1] = grad_c
        grad_logits = ops.backward(logits, targets, lse, grad_seq.view(-1)[rows])
        if grad_hidden is not None:
            grad_hidden[rows, cols] = (grad_logits @ weight).to(grad_hidden.dtype)
        if grad_weight is not None:
            if grad_weight.dtype == dtype:
                grad_weight.addmm_(grad_logits.t(), h)
            else:
                grad_weight += (grad_logits.t() @ h).to(grad_weight.dtype)
        if grad_bias is not None:
            grad_bias += grad_logits.sum(0, dtype=torch.float32)
        del logits, grad_logits, h


@torch.no_grad()
def score_hidden(hidden, weight, bias, plan: ChunkPlan, config, impl) -> torch.Tensor:
    """(5B,) float32 log-probs of the planned target positions, no gradient (2 P H V FLOPs)."""
    ops = _chunk_ops(impl)
    sums = torch.zeros(5 * plan.batch, dtype=torch.float32, device=hidden.device)
    step = plan.positions_per_chunk
    for p0 in range(0, plan.rows.numel(), step):
        rows, cols = plan.rows[p0 : p0 + step], plan.cols[p0 : p0 + step]
        ops.forward(
            _linear(hidden[rows, cols], weight, bias), plan.targets[p0 : p0 + step], rows, sums
        )
    if config.average_log_prob:
        sums = sums / plan.counts.clamp(min=1)
    return sums


def _linear(h, weight, bias):
    if bias is None:
        return h @ weight.t()
    return torch.addmm(bias, h, weight.t())


# --------------------------------------------------------------------------------------------
# Per-chunk operations: Triton kernels, or the same algorithm in torch
# --------------------------------------------------------------------------------------------


class _TritonChunkOps:
    @staticmethod
    def forward(logits, targets, segments, sums):
        return _kernels().token_logprobs_forward(logits, targets, segments, sums)

    @staticmethod
    def backward(logits, targets, lse, weights):
        return _kernels().token_logprobs_backward(logits, targets, lse, weights, inplace=True)

    @staticmethod
    def terms(policy, ref, config, grad_scale):
        return _kernels().symmpo_terms_forward(policy, ref, config.kernel_weights, grad_scale)


class _TorchChunkOps:
    """Row blocks of TORCH_ROW_BLOCK keep float32 temporaries small; fp32 logits are
    transformed in place (softmax, then the gradient, over the chunk itself)."""

    @staticmethod
    def forward(logits, targets, segments, sums):
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for i in range(0, logits.shape[0], TORCH_ROW_BLOCK):
            block = logits[i : i + TORCH_ROW_BLOCK].float()
            lse[i : i + TORCH_ROW_BLOCK] = torch.logsumexp(block, dim=-1)
        target_logits = logits.gather(1, targets[:, None]).squeeze(1).float()
        sums.index_add_(0, segments, target_logits - lse)
        return lse

    @staticmethod
    def backward(logits, targets, lse, weights):
        for i in range(0, logits.shape[0], TORCH_ROW_BLOCK):
            j = min(i + TORCH_ROW_BLOCK, logits.shape[0])
            rows = logits[i:j]
            block = rows if rows.dtype == torch.float32 else rows.float()
            block.sub_(lse[i:j, None]).exp_().mul_(-weights[i:j, None])
            block[torch.arange(j - i, device=logits.device), targets[i:j]] += weights[i:j]
            if block is not rows:
                rows.copy_(block)
        return logits

    @staticmethod
    def terms(policy, ref, config, grad_scale):
        policy = policy.detach().requires_grad_(True)
        with torch.enable_grad():
            t = reference.symmpo_terms(policy, ref, config)
            (grad,) = torch.autograd.grad(t.loss.sum() * grad_scale, policy)
        terms = torch.stack([t.dpo, t.pair, t.margin, t.anchor]).detach()
        z = torch.stack([t.z_dpo, t.z_p1, t.z_p2]).detach()
        return t.loss.detach(), terms, z, grad


def _chunk_ops(impl: str):
    return _TritonChunkOps if impl == "triton" else _TorchChunkOps
