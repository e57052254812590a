"""Independent references for the varlen attention: sdpa one sequence at a time, with every
response's keys gathered explicitly (what the shared-prefix attention avoids), autograd for
the gradients; and the tests' seeded random inputs (random_qkv)."""

import torch
import torch.nn.functional as F


def sdpa_varlen(q, k, v, cu_q, cu_k, scale, causal=True):
    """q (T_q, H, D), k/v (T_k, H_kv, D), host cumulative lengths: one sdpa call a sequence,
    causal aligned bottom-right (query j of n_q sees keys 0 .. n_k - n_q + j)."""
    outputs = []
    for i in range(len(cu_q) - 1):
        qi = q[cu_q[i] : cu_q[i + 1]].transpose(0, 1)
        ki = k[cu_k[i] : cu_k[i + 1]].transpose(0, 1)
        vi = v[cu_k[i] : cu_k[i + 1]].transpose(0, 1)
        if ki.shape[0] != qi.shape[0]:  # grouped-query attention
            ki = ki.repeat_interleave(qi.shape[0] // ki.shape[0], dim=0)
            vi = vi.repeat_interleave(qi.shape[0] // vi.shape[0], dim=0)
        n_q, n_k = qi.shape[1], ki.shape[1]
        mask = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device)
        if causal:
            mask = mask.tril(n_k - n_q)
        out = F.scaled_dot_product_attention(qi, ki, vi, mask, scale=scale)
        outputs.append(out.transpose(0, 1))
    return torch.cat(outputs)


def shared_attention_oracle(q, k, v, prefix_lengths, response_lengths, scale):
    """The shared-prefix attention over a prefixes-first stream: prefix r (prefix_lengths[r]
    tokens) attends causally to itself; each response (response_lengths[r] lists row r's) to
    its row's prefix, gathered, then causally to itself."""
    n_prefix = sum(prefix_lengths)
    prefix_cu = [0]
    for n in prefix_lengths:
        prefix_cu.append(prefix_cu[-1] + n)
    prefix_out = sdpa_varlen(q[:n_prefix], k[:n_prefix], v[:n_prefix], prefix_cu, prefix_cu, scale)
    keys, cu_q, cu_k, start = [], [0], [0], n_prefix
    for row, lengths in enumerate(response_lengths):
        own_prefix = torch.arange(prefix_cu[row], prefix_cu[row + 1])
        for n in lengths:
            keys.append(torch.cat([own_prefix, torch.arange(start, start + n)]))
            cu_q.append(cu_q[-1] + n)
            cu_k.append(cu_k[-1] + len(keys[-1]))
            start += n
    if not keys:
        return prefix_out
    keys = torch.cat(keys)
    response_out = sdpa_varlen(q[n_prefix:], k[keys], v[keys], cu_q, cu_k, scale)
    return torch.cat([prefix_out, response_out])


def packed_segments(prefix_lengths, response_lengths):
    """Packed segments (rows, L) as the collator lays rows out: row r is a prefix of
    prefix_lengths[r] tokens (segment 0), then its responses (segments 1, 2, ...), then
    padding (-1, two columns at least)."""
    width = max(p + sum(r) for p, r in zip(prefix_lengths, response_lengths, strict=True)) + 2
    segments = torch.full((len(prefix_lengths), width), -1)
    for row, (p, responses) in enumerate(zip(prefix_lengths, response_lengths, strict=True)):
        segments[row, :p] = 0
        start = p
        for k, n in enumerate(responses, start=1):
            segments[row, start : start + n] = k
            start += n
    return segments


def random_qkv(n, heads, kv_heads, dim=8, dtype=torch.float64, seed=0):
    """Random q (n, heads, dim), k and v (n, kv_heads, dim) from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, heads, dim, generator=gen, dtype=dtype)
    k, v = (torch.randn(n, kv_heads, dim, generator=gen, dtype=dtype) for _ in range(2))
    return q, k, v
