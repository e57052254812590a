"""symmpo.train.shared_varlen: the varlen shared-prefix attention against sdpa on explicitly
gathered keys (outputs and gradients), its layout, what it keeps for backward, its dtypes under
autocast, the flash kernels' plumbing (on meta tensors) and the route "auto" chooses."""

import pytest
import torch
from varlen_oracle import packed_segments, random_qkv, shared_attention_oracle

from symmpo.train import shared_varlen, varlen_kernels
from symmpo.train.shared_varlen import SharedPrefixAttention, build_varlen_layout
from symmpo.train.varlen_kernels import REFERENCE, AttentionKernels

# Rows of different prefix lengths, three and two responses, a one-token response.
PREFIXES, RESPONSES = [5, 3, 4, 4], [[2, 3, 1], [4, 2], [3, 3, 2], [1, 2]]


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2)])
def test_shared_prefix_attention_matches_gathered_sdpa(heads, kv_heads):
    layout, _ = build_varlen_layout(packed_segments(PREFIXES, RESPONSES))
    n = sum(PREFIXES) + sum(map(sum, RESPONSES))
    q, k, v = random_qkv(n, heads, kv_heads, seed=3)
    ours = [t.clone().requires_grad_(True) for t in (q, k, v)]
    theirs = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = SharedPrefixAttention.apply(*ours, layout, 0.35)
    want = shared_attention_oracle(*theirs, PREFIXES, RESPONSES, 0.35)
    torch.testing.assert_close(out, want)
    dout = torch.randn_like(out)
    out.backward(dout)
    want.backward(dout)
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine.grad, reference.grad)


def test_layout_by_hand():
    # Row 0: prefix (2 tokens), response 1 (2), response 2 (1), padding. Row 1: prefix (3),
    # response 3 (1), padding. Stream, prefixes first: [p p | P P P | a a b | c].
    segments = torch.tensor([[0, 0, 1, 1, 2, -1], [0, 0, 0, 3, -1, -1]])
    layout, stream = build_varlen_layout(segments)
    assert stream.tolist() == [[0, 1, 5, 6, 7, -1], [2, 3, 4, 8, -1, -1]]
    assert layout.n_prefix == 5
    # Every segment on itself: the prefixes, then the responses a, b, c.
    assert layout.self_attention.cu_q.tolist() == [0, 2, 5, 7, 8, 9]
    assert layout.self_attention.cu_k_list == [0, 2, 5, 7, 8, 9]
    assert layout.self_attention.max_q == layout.self_attention.max_k == 3
    # Row r's responses (stream[5:]) on row r's prefix (stream[:5]).
    assert layout.prefix_context.cu_q_list == [0, 3, 4] and layout.prefix_context.max_q == 3
    assert layout.prefix_context.cu_k_list == [0, 2, 5] and layout.prefix_context.max_k == 3
    assert layout.self_attention.cu_q.dtype == torch.int32


def test_layout_refuses_a_row_without_prefix():
    with pytest.raises(ValueError, match="every packed row needs a prefix"):
        build_varlen_layout(torch.tensor([[0, 1, 1], [1, 1, -1]]))


def test_keeps_for_backward_only_q_k_v_out_and_lse():
    """No gathered keys, no per-response copies: what the attention holds until its backward
    is the bytes of q, k, v, out and lse (H x N float32)."""
    layout, _ = build_varlen_layout(packed_segments(PREFIXES, RESPONSES))
    n = sum(PREFIXES) + sum(map(sum, RESPONSES))
    q, k, v = (t.float().requires_grad_(True) for t in random_qkv(n, 4, 2, dim=16))
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = SharedPrefixAttention.apply(q, k, v, layout, 0.25)
    lse_bytes = 4 * n * 4
    assert sum(storages.values()) == 2 * q.nbytes + k.nbytes + v.nbytes + lse_bytes
    assert out.shape == q.shape


def test_flash_kernels_get_the_autocast_dtype(monkeypatch):
    """Under autocast with float32 weights RoPE hands over float32 q, k and a bf16 v: the
    kernels get all three in the autocast dtype; without autocast, q's dtype."""
    seen = []

    def recording_forward(q, k, v, *args):
        seen.append((q.dtype, k.dtype, v.dtype))
        return REFERENCE.forward(q, k, v, *args)

    recording = AttentionKernels("recording", recording_forward, REFERENCE.backward)
    monkeypatch.setattr(shared_varlen, "kernels_for", lambda q: recording)
    layout, _ = build_varlen_layout(packed_segments([2, 2], [[1, 2], [2]]))
    q, k, v = random_qkv(9, 2, 2, dtype=torch.float32)
    query, key, value = (t.transpose(0, 1)[None] for t in (q, k, v.bfloat16()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = shared_varlen.varlen_shared_attention(
            None, query, key, value, None, symmpo_shared=layout
        )
    assert set(seen) == {(torch.bfloat16,) * 3} and out.dtype == torch.bfloat16
    seen.clear()
    shared_varlen.varlen_shared_attention(
        None, query, key, value.float(), None, symmpo_shared=layout
    )
    assert set(seen) == {(torch.float32,) * 3}


def test_flash_wrappers_follow_the_aten_schemas(monkeypatch):
    """The CUDA path's plumbing, run on meta tensors (PyTorch's shape functions for its flash
    ops): the calls' arity and types, lse as (H, T_q) float32, gradients shaped as q, k, v
    through the merged attention's forward and backward. Shapes only: the values (argument
    order included) are checked by tests/test_cuda.py on a GPU."""
    monkeypatch.setattr(shared_varlen, "kernels_for", lambda q: varlen_kernels.FLASH)
    layout, _ = build_varlen_layout(packed_segments(PREFIXES, RESPONSES))
    n = sum(PREFIXES) + sum(map(sum, RESPONSES))
    q = torch.empty(n, 4, 64, dtype=torch.bfloat16, device="meta", requires_grad=True)
    k, v = (
        torch.empty(n, 2, 64, dtype=torch.bfloat16, device="meta", requires_grad=True)
        for _ in range(2)
    )
    out, lse, _ = varlen_kernels.FLASH.forward(q, k, v, layout.self_attention, True, 0.125)
    assert lse.shape == (4, n) and lse.dtype == torch.float32
    out = SharedPrefixAttention.apply(q, k, v, layout.to("meta"), 0.125)
    out.backward(torch.empty_like(out))
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    assert [t.grad.shape for t in (q, k, v)] == [q.shape, k.shape, v.shape]


def test_reference_keeps_float32_under_autocast():
    """Autocast must not lower the reference's math: bf16 q, k, v under CPU autocast give the
    same outputs and gradients as without it."""
    layout, _ = build_varlen_layout(packed_segments(PREFIXES, RESPONSES))
    n = sum(PREFIXES) + sum(map(sum, RESPONSES))
    q, k, v = (t.bfloat16() for t in random_qkv(n, 4, 2, dim=16, seed=5))
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(6)).bfloat16()
    results = []
    for autocast in (False, True):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = SharedPrefixAttention.apply(*leaves, layout, 0.25)
        out.backward(dout)
        results.append([out, *(t.grad for t in leaves)])
    for plain, autocast in zip(*results, strict=True):
        torch.testing.assert_close(autocast, plain, rtol=0, atol=0)


def test_a_row_without_responses():
    """A prefix with no responses (and a stream with none at all) attends causally to itself."""
    prefixes, responses = [3, 4], [[2, 1], []]
    layout, _ = build_varlen_layout(packed_segments(prefixes, responses))
    q, k, v = (t.requires_grad_(True) for t in random_qkv(10, 2, 2, seed=7))
    out = SharedPrefixAttention.apply(q, k, v, layout, 0.3)
    torch.testing.assert_close(out, shared_attention_oracle(q, k, v, prefixes, responses, 0.3))
    only_prefixes, _ = build_varlen_layout(packed_segments([3, 4], [[], []]))
    q7, k7, v7 = (t[:7].detach().requires_grad_(True) for t in (q, k, v))
    out = SharedPrefixAttention.apply(q7, k7, v7, only_prefixes, 0.3)
    out.sum().backward()
    want = shared_attention_oracle(q[:7], k[:7], v[:7], [3, 4], [[], []], 0.3)
    torch.testing.assert_close(out, want)


def test_auto_takes_varlen_only_where_flash_runs(tiny, monkeypatch):
    model = tiny[1]
    cpu = torch.device("cpu")
    choose = shared_varlen.choose_shared_attention
    assert choose("auto", model, cpu, torch.bfloat16) == "mask"  # no flash on the CPU
    assert choose("varlen", model, cpu, torch.float32) == "varlen"  # an explicit choice holds
    probes = []
    monkeypatch.setattr(shared_varlen, "flash_supported", lambda q: probes.append(q) or True)
    assert choose("auto", model, cpu, torch.bfloat16) == "varlen"
    text = model.config.text_config
    assert probes[0].dtype == torch.bfloat16
    assert probes[0].shape[1:] == (text.num_attention_heads, text.head_dim)
