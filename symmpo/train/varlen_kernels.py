"""Variable-length attention that returns its log-sum-exp, and a backward that takes any
(out, lse): the two halves from which shared_varlen.py builds the shared-prefix attention.

Layout (flash-attention's): queries q (T_q, H, D), keys and values k, v (T_k, H_kv, D) with H
a multiple of H_kv (grouped-query attention), the sequences given by cumulative lengths
(``VarlenSequences``). Query i of a sequence of n_q queries against n_k keys sees every key
(``causal=False``) or keys 0 .. n_k - n_q + i (``causal=True``, aligned bottom-right).

    forward:   s_j = scale q.k_j,  lse = log sum_j exp(s_j)  (float32, (H, T_q)),
               out = sum_j exp(s_j - lse) v_j               (q's dtype, (T_q, H, D))
    backward:  P = exp(scale q k^T - lse),  delta = rowsum(dout * out),
               dS = P * (dout v^T - delta),
               dq = scale dS k,  dk = scale dS^T q,  dv = P^T dout

The backward reads ``out`` and ``lse`` only through P and delta. Given the out and lse of an
attention over a larger key set (this part's keys and others, merged), it returns exactly this
part's share of the gradients: dq summed over the parts, and dk, dv of this part's keys. That
is what lets one attention be computed as two over disjoint key sets and merged by their lse,
with no keys gathered or copied (ring attention uses the same identity).

Two implementations with the same interface (``AttentionKernels``):
- FLASH: PyTorch's own flash-attention kernels (``aten._flash_attention_forward/_backward``):
  CUDA, fp16/bf16, sm80 or newer, head dim a multiple of 8 up to 256. Memory: out and lse,
  nothing of size T_q x T_k.
- REFERENCE: the formulas above in PyTorch, one sequence at a time, in float32 (float64 for
  float64 inputs; the caller turns autocast off around it): any device and dtype; the CPU, the
  tests, GPUs or head sizes flash does not take. It materialises each sequence's (H, n_q, n_k)
  scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch


@dataclass
class VarlenSequences:
    """A batch of variable-length attention problems: query sequence i is rows
    cu_q[i]:cu_q[i+1] of q, its keys rows cu_k[i]:cu_k[i+1] of k and v. cu_q, cu_k are int32
    (n + 1,) on the attention's device (the flash kernels read them there); the *_list copies
    are on the host (the reference loops over them); max_q, max_k the longest sequences."""

    cu_q: torch.Tensor
    cu_k: torch.Tensor
    max_q: int
    max_k: int
    cu_q_list: list
    cu_k_list: list

    @classmethod
    def from_lengths(cls, q_lengths: torch.Tensor, k_lengths: torch.Tensor) -> VarlenSequences:
        cu_q, cu_k = _cumulative(q_lengths), _cumulative(k_lengths)
        return cls(
            cu_q=cu_q,
            cu_k=cu_k,
            max_q=int(q_lengths.max()) if len(q_lengths) else 0,
            max_k=int(k_lengths.max()) if len(k_lengths) else 0,
            cu_q_list=cu_q.tolist(),
            cu_k_list=cu_k.tolist(),
        )

    def to(self, device) -> VarlenSequences:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        moved["cu_q"] = self.cu_q.to(device, non_blocking=True)
        moved["cu_k"] = self.cu_k.to(device, non_blocking=True)
        return VarlenSequences(**moved)


def _cumulative(lengths: torch.Tensor) -> torch.Tensor:
    return torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(torch.int32)


class AttentionKernels(NamedTuple):
    """forward(q, k, v, seqs, causal, scale) -> (out, lse (H, T_q) float32, state);
    backward(dout, q, k, v, out, lse, seqs, causal, scale, state) -> (dq, dk, dv)."""

    name: str
    forward: Callable
    backward: Callable


# --------------------------------------------------------------------------------------------
# PyTorch's flash-attention kernels (CUDA)
# --------------------------------------------------------------------------------------------


def flash_supported(q: torch.Tensor) -> bool:
    """Whether FLASH runs these queries: CUDA, fp16/bf16, sm80+, head dim % 8 == 0 and <= 256,
    and PyTorch built with flash-attention."""
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    if torch.version.hip is not None:  # ROCm's flash backend lays lse out as (B, H, max_q)
        return False
    head_dim = q.shape[-1]
    if head_dim % 8 or head_dim > 256:
        return False
    if torch.cuda.get_device_capability(q.device) < (8, 0):
        return False
    return torch.backends.cuda.is_flash_attention_available()


def _check_lse_layout(lse: torch.Tensor, n_queries: int, n_heads: int) -> torch.Tensor:
    """The varlen kernels return lse as (H, T_q); refuse anything else (ROCm's backend, say)."""
    if lse.shape != (n_heads, n_queries):
        raise RuntimeError(
            f"flash-attention returned a log-sum-exp of shape {tuple(lse.shape)}; expected "
            f"({n_heads}, {n_queries}) for {n_queries} queries and {n_heads} heads"
        )
    return lse


def flash_forward(q, k, v, seqs: VarlenSequences, causal: bool, scale: float):
    out, lse, rng_state, unused, _ = torch.ops.aten._flash_attention_forward(
        q, k, v, seqs.cu_q, seqs.cu_k, seqs.max_q, seqs.max_k, 0.0, causal, False, scale=scale
    )
    return out, _check_lse_layout(lse, q.shape[0], q.shape[1]), (rng_state, unused)


def flash_backward(dout, q, k, v, out, lse, seqs: VarlenSequences, causal, scale, state):
    rng_state, unused = state
    # The kernel reads lse by raw pointer as a dense (H, T_q) array: no views.
    dq, dk, dv = torch.ops.aten._flash_attention_backward(
        dout,
        q,
        k,
        v,
        out,
        lse.contiguous(),
        seqs.cu_q,
        seqs.cu_k,
        seqs.max_q,
        seqs.max_k,
        0.0,
        causal,
        rng_state,
        unused,
        scale=scale,
    )
    return dq, dk, dv


FLASH = AttentionKernels("flash", flash_forward, flash_backward)


# --------------------------------------------------------------------------------------------
# Reference (any device): the module docstring's formulas, one sequence at a time
# --------------------------------------------------------------------------------------------


def _sequence(q, k, v, seqs: VarlenSequences, i: int, compute: torch.dtype):
    """Sequence i as (H, n, D) tensors in the compute dtype, keys and values repeated to H
    heads; its rows of q and of k."""
    q0, q1 = seqs.cu_q_list[i], seqs.cu_q_list[i + 1]
    k0, k1 = seqs.cu_k_list[i], seqs.cu_k_list[i + 1]
    group = q.shape[1] // k.shape[1]
    qi = q[q0:q1].transpose(0, 1).to(compute)
    ki = k[k0:k1].transpose(0, 1).to(compute).repeat_interleave(group, dim=0)
    vi = v[k0:k1].transpose(0, 1).to(compute).repeat_interleave(group, dim=0)
    return qi, ki, vi, slice(q0, q1), slice(k0, k1)


def _scores(qi, ki, causal: bool, scale: float) -> torch.Tensor:
    scores = scale * qi @ ki.transpose(1, 2)  # (H, n_q, n_k)
    if causal:
        n_q, n_k = scores.shape[-2:]
        visible = torch.ones(n_q, n_k, dtype=torch.bool, device=qi.device).tril(n_k - n_q)
        scores = scores.masked_fill(~visible, float("-inf"))
    return scores


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def reference_forward(q, k, v, seqs: VarlenSequences, causal: bool, scale: float):
    compute = _compute_dtype(q.dtype)
    out = torch.zeros_like(q)
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=compute, device=q.device)
    for i in range(len(seqs.cu_q_list) - 1):
        qi, ki, vi, rows, _ = _sequence(q, k, v, seqs, i, compute)
        if qi.shape[1] == 0 or ki.shape[1] == 0:
            continue
        scores = _scores(qi, ki, causal, scale)
        lse_i = torch.logsumexp(scores, dim=-1)  # (H, n_q)
        out[rows] = (torch.exp(scores - lse_i[..., None]) @ vi).transpose(0, 1).to(q.dtype)
        lse[:, rows] = lse_i
    return out, lse, None


def reference_backward(dout, q, k, v, out, lse, seqs: VarlenSequences, causal, scale, state):
    compute = _compute_dtype(q.dtype)
    dq = torch.zeros(q.shape, dtype=compute, device=q.device)
    dk = torch.zeros(k.shape, dtype=compute, device=q.device)
    dv = torch.zeros(v.shape, dtype=compute, device=q.device)
    heads, kv_heads = q.shape[1], k.shape[1]
    for i in range(len(seqs.cu_q_list) - 1):
        qi, ki, vi, rows, keys = _sequence(q, k, v, seqs, i, compute)
        if qi.shape[1] == 0 or ki.shape[1] == 0:
            continue
        do = dout[rows].transpose(0, 1).to(compute)  # (H, n_q, D)
        oi = out[rows].transpose(0, 1).to(compute)
        p = torch.exp(_scores(qi, ki, causal, scale) - lse[:, rows].to(compute)[..., None])
        delta = (do * oi).sum(-1, keepdim=True)
        ds = p * (do @ vi.transpose(1, 2) - delta)
        dq[rows] = (scale * ds @ ki).transpose(0, 1)
        group_sum = lambda t: t.reshape(kv_heads, heads // kv_heads, *t.shape[1:]).sum(1)  # noqa: E731
        dk[keys] = group_sum(scale * ds.transpose(1, 2) @ qi).transpose(0, 1)
        dv[keys] = group_sum(p.transpose(1, 2) @ do).transpose(0, 1)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


REFERENCE = AttentionKernels("reference", reference_forward, reference_backward)


def kernels_for(q: torch.Tensor) -> AttentionKernels:
    """FLASH where it runs these queries, else REFERENCE."""
    return FLASH if flash_supported(q) else REFERENCE
