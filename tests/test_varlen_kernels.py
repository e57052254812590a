"""symmpo.train.varlen_kernels: the reference varlen attention kernels against sdpa one
sequence at a time (checked first against a loop by hand), where flash runs, the lse layout."""

import pytest
import torch
from varlen_oracle import random_qkv, sdpa_varlen

from symmpo.train import varlen_kernels
from symmpo.train.varlen_kernels import REFERENCE, VarlenSequences


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_sdpa_oracle_is_causal_bottom_right(heads, kv_heads):
    """Query j of a q-sequence of length R against keys of length P + R sees keys 0..P + j."""
    gen = torch.Generator().manual_seed(0)
    cu_q, cu_k = [0, 3, 4], [0, 5, 7]  # (R, P + R) = (3, 5) and (1, 2)
    q = torch.randn(4, heads, 8, generator=gen, dtype=torch.float64)
    k = torch.randn(7, kv_heads, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(7, kv_heads, 8, generator=gen, dtype=torch.float64)
    got = sdpa_varlen(q, k, v, cu_q, cu_k, scale=0.3)
    for seq in range(2):
        n_q, n_k = cu_q[seq + 1] - cu_q[seq], cu_k[seq + 1] - cu_k[seq]
        for j in range(n_q):
            for h in range(heads):
                kh = h // (heads // kv_heads)
                keys = k[cu_k[seq] : cu_k[seq] + n_k - n_q + j + 1, kh]
                values = v[cu_k[seq] : cu_k[seq] + n_k - n_q + j + 1, kh]
                weights = torch.softmax(0.3 * keys @ q[cu_q[seq] + j, h], 0)
                torch.testing.assert_close(got[cu_q[seq] + j, h], weights @ values)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_reference_kernels_match_sdpa(causal, heads, kv_heads):
    """Forward: out as sdpa's, lse = log sum exp of the visible scaled scores. Backward, given
    that out and lse: sdpa's autograd gradients."""
    q_lengths, k_lengths = torch.tensor([3, 1, 4]), torch.tensor([5, 2, 4])
    seqs = VarlenSequences.from_lengths(q_lengths, k_lengths)
    q, _, _ = random_qkv(8, heads, kv_heads, seed=1)
    _, k, v = random_qkv(11, heads, kv_heads, seed=2)
    out, lse, state = REFERENCE.forward(q, k, v, seqs, causal, 0.3)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    want = sdpa_varlen(*leaves, seqs.cu_q_list, seqs.cu_k_list, 0.3, causal=causal)
    torch.testing.assert_close(out, want.detach())
    # lse of query 0 of sequence 2 (4 queries on 4 keys): causal sees key 0 only.
    scores = 0.3 * k[7 : 8 if causal else 11, 0] @ q[4, 0]
    torch.testing.assert_close(lse[0, 4], torch.logsumexp(scores, 0))
    dout = torch.randn_like(out)
    want.backward(dout)
    got = REFERENCE.backward(dout, q, k, v, out, lse, seqs, causal, 0.3, state)
    for g, leaf in zip(got, leaves, strict=True):
        torch.testing.assert_close(g, leaf.grad)


def test_flash_is_chosen_only_where_it_runs():
    q = torch.zeros(4, 2, 64, dtype=torch.bfloat16)
    assert not varlen_kernels.flash_supported(q)  # not CUDA
    assert varlen_kernels.kernels_for(q) is REFERENCE


def test_lse_layout_is_checked():
    lse = torch.zeros(3, 7)  # (H, T): as the varlen kernels return it
    assert varlen_kernels._check_lse_layout(lse, 7, 3) is lse
    for wrong in (torch.zeros(7, 3), torch.zeros(2, 7, 3)):
        with pytest.raises(RuntimeError, match=r"expected \(3, 7\) for 7 queries and 3 heads"):
            varlen_kernels._check_lse_layout(wrong, 7, 3)
