"""The shared-prefix forward is exact: same log-probs, loss and gradients as the naive one."""

import copy
import importlib.util

import pytest
import torch
from train_script import load_train_script

from symmpo import SymMPOConfig
from symmpo.train import shared_varlen
from symmpo.train.collator import PreferenceCollator
from symmpo.train.data import records_from_rows
from symmpo.train.model import naive_forward, num_image_tokens, tiny_llava
from symmpo.train.objectives import compute_loss, score_batch
from symmpo.train.shared_prefix import shared_attention_mask, shared_forward
from symmpo.train.shared_varlen import build_varlen_layout, sdpa_varlen, use_varlen_attention
from symmpo.train.synthetic import make_synthetic_records
from symmpo.train.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer()
    model, processor = tiny_llava(tokenizer, seed=3)
    return tokenizer, model.float(), processor


def routed(model, attention: str):
    """The model itself for the 4-D mask route, a copy on the varlen attention otherwise."""
    if attention == "mask":
        return model
    varlen = copy.deepcopy(model)
    use_varlen_attention(varlen)
    return varlen


def collate(tiny, loss="symmpo", n=3, seed=11):
    tokenizer, model, processor = tiny
    collator = PreferenceCollator(tokenizer, processor, model.config.image_token_id,
                                  num_image_tokens(model.config), loss=loss)  # fmt: skip
    return collator(records_from_rows(make_synthetic_records(n, seed=seed))[0])


@pytest.mark.parametrize("attention", ["mask", "varlen"])
@pytest.mark.parametrize("loss", ["symmpo", "dpo", "mdpo"])
def test_per_sequence_logps_match_on_random_inputs(tiny, loss, attention, monkeypatch):
    model = copy.deepcopy(tiny[1])
    torch.manual_seed(0)
    with torch.no_grad():  # random weights, scaled up so the comparison is not trivially flat
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = collate(tiny, loss, n=4, seed=21)
    naive = score_batch(model, batch, average=False, forward=naive_forward)
    calls = []
    real_sdpa_varlen = shared_varlen.sdpa_varlen
    monkeypatch.setattr(shared_varlen, "sdpa_varlen",
                        lambda *a: calls.append(a) or real_sdpa_varlen(*a))  # fmt: skip
    shared = score_batch(routed(model, attention), batch, average=False, forward=shared_forward)
    layers = model.config.text_config.num_hidden_layers
    assert len(calls) == (2 * layers if attention == "varlen" else 0)  # prefixes, responses
    torch.testing.assert_close(shared, naive, rtol=1e-5, atol=1e-4)
    assert batch["shared"]["n_tokens"] < batch["n_tokens"]


@pytest.mark.parametrize("attention", ["mask", "varlen"])
def test_loss_and_gradients_match(tiny, attention):
    batch = collate(tiny)
    ref = -torch.rand(15) * 30
    results = {}
    for name, forward in (("naive", naive_forward), ("shared", shared_forward)):
        model = copy.deepcopy(tiny[1])
        if name == "shared":
            model = routed(model, attention)
        out = compute_loss(model, batch, ref, "symmpo", SymMPOConfig(), forward=forward)
        out.loss.backward()
        grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
        results[name] = (out.loss.item(), grads)
    assert results["shared"][0] == pytest.approx(results["naive"][0], rel=1e-5)
    for a, b in zip(results["shared"][1], results["naive"][1], strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_mask_each_response_sees_prefix_and_itself_only():
    segments = torch.tensor([[0, 0, 1, 1, 2, -1]])
    visible = shared_attention_mask(segments, torch.float32)[0, 0] == 0
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],
        [1, 1, 0, 0, 0, 0],  # padding: sees the prefix; its output is never used
    ], dtype=torch.bool)  # fmt: skip
    assert torch.equal(visible, expected)


@pytest.mark.parametrize(
    "extra",
    [[], ["--gradient_checkpointing"], ["--gradient_checkpointing", "--shared_attention", "varlen"],
     ["--ref", "model", "--shared_attention", "varlen"]],
)  # fmt: skip
def test_one_train_step_naive_vs_shared(tmp_path, extra):
    """The issue's acceptance check: same seed, one step, loss within 1e-4, grad norm 1e-3."""
    train = load_train_script()
    common = ["--n_train", "16", "--heldout", "4", "--batch_size", "4", "--max_steps", "1",
              "--eval_batch_size", "8", *extra]  # fmt: skip
    naive_args = [a for a in common if a not in ("--shared_attention", "varlen")]
    runs = {f: train.main([*(naive_args if f == "naive" else common), "--forward", f,
                           "--output_dir", str(tmp_path / f)])
            for f in ("naive", "shared")}  # fmt: skip
    naive, shared = runs["naive"]["history"][0], runs["shared"]["history"][0]
    assert abs(shared["loss"] - naive["loss"]) <= 1e-4 * abs(naive["loss"])
    assert abs(shared["grad_norm"] - naive["grad_norm"]) <= 1e-3 * naive["grad_norm"]


def test_flash_attn_installed_keeps_sdpa_for_the_shared_language_model(monkeypatch):
    """With flash-attn on CUDA, --forward shared loads the language model with sdpa (its 4-D
    mask) and the vision tower with flash-attention; other runs use flash-attention."""

    from symmpo.train import model as model_module

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        model_module.importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "flash_attn" else real_find_spec(name, *a),
    )
    assert model_module.attention_implementation(cuda) == "flash_attention_2"
    assert model_module.attention_implementation(cuda, shared_prefix=True) == {
        "text_config": "sdpa", "vision_config": "flash_attention_2"
    }  # fmt: skip
    assert model_module.attention_implementation(cpu, shared_prefix=True) == "sdpa"


def test_varlen_layout_by_hand():
    # Row 0: prefix (2 tokens), response 1 (2), response 2 (1), padding. Row 1: prefix (3),
    # response 3 (1), padding. Stream: [p p a a b | P P P c] -> positions 0..8.
    segments = torch.tensor([[0, 0, 1, 1, 2, -1], [0, 0, 0, 3, -1, -1]])
    layout, stream = build_varlen_layout(segments)
    assert stream.tolist() == [[0, 1, 2, 3, 4, -1], [5, 6, 7, 8, -1, -1]]
    assert layout.prefix_index.tolist() == [0, 1, 5, 6, 7]
    assert layout.cu_prefix.tolist() == [0, 2, 5] and layout.max_prefix == 3
    assert layout.response_index.tolist() == [2, 3, 4, 8]
    assert layout.cu_query.tolist() == [0, 2, 3, 4] and layout.max_query == 2
    # Each response's keys: its prefix, then itself.
    assert layout.kv_index.tolist() == [0, 1, 2, 3, 0, 1, 4, 5, 6, 7, 8]
    assert layout.cu_key.tolist() == [0, 4, 7, 11] and layout.max_key == 4
    order = torch.cat([layout.prefix_index, layout.response_index])
    assert torch.equal(order[layout.inverse], torch.arange(9))


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_sdpa_varlen_is_causal_bottom_right(heads, kv_heads):
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


@pytest.fixture
def fresh_varlen_signature():
    """The cached signature of torch's varlen_attn forgotten before and after a test that
    replaces the function."""
    shared_varlen._torch_varlen_parameters.cache_clear()
    yield
    shared_varlen._torch_varlen_parameters.cache_clear()


@pytest.mark.parametrize("new_api", [True, False])
@pytest.mark.usefixtures("fresh_varlen_signature")
def test_torch_varlen_kernel_gets_its_signature(monkeypatch, new_api):
    """PyTorch's varlen_attn changed its signature across releases: newer ones take
    window_size, scale and enable_gqa; older ones is_causal only (default scale, equal heads)."""
    import torch.nn.attention.varlen as varlen_module

    seen = {}
    if new_api:

        def fake(q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux=None, scale=None,
                 window_size=(-1, -1), enable_gqa=False):  # fmt: skip
            seen.update(window=window_size, scale=scale, gqa=enable_gqa, kv_heads=k.shape[1])
            return sdpa_varlen(q, k, v, cu_q.tolist(), cu_k.tolist(), scale)
    else:

        def fake(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=False, return_aux=None):
            seen.update(causal=is_causal, kv_heads=k.shape[1])
            return sdpa_varlen(q, k, v, cu_q.tolist(), cu_k.tolist(), None)

    monkeypatch.setattr(varlen_module, "varlen_attn", fake)
    monkeypatch.setattr(shared_varlen, "varlen_kernel", lambda device_type: "torch")
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(4, 4, 8, generator=gen).bfloat16()
    k, v = (torch.randn(7, 2, 8, generator=gen).bfloat16() for _ in range(2))
    cu_q, cu_k = [0, 3, 4], [0, 5, 7]
    as_int = lambda cu: torch.tensor(cu, dtype=torch.int32)  # noqa: E731
    got = shared_varlen.varlen_causal_attention(
        q, k, v, as_int(cu_q), as_int(cu_k), cu_q, cu_k, 3, 5, 8**-0.5
    )
    torch.testing.assert_close(got, sdpa_varlen(q, k, v, cu_q, cu_k, 8**-0.5))
    if new_api:
        assert seen == {"window": (-1, 0), "scale": 8**-0.5, "gqa": True, "kv_heads": 2}
    else:
        assert seen == {"causal": True, "kv_heads": 4}  # heads repeated for it


@pytest.mark.usefixtures("fresh_varlen_signature")
def test_varlen_kernel_runs_in_the_autocast_dtype(monkeypatch):
    """Under autocast with float32 weights RoPE hands over float32 q, k and a bf16 v: the
    16-bit kernels get all three in the autocast dtype (not the sdpa fallback)."""
    import torch.nn.attention.varlen as varlen_module

    seen = []

    def fake(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
        seen.append((q.dtype, k.dtype, v.dtype))
        return sdpa_varlen(q, k, v, cu_q.tolist(), cu_k.tolist(), scale)

    monkeypatch.setattr(varlen_module, "varlen_attn", fake)
    monkeypatch.setattr(shared_varlen, "varlen_kernel", lambda device_type: "torch")
    q, k = torch.randn(4, 2, 8), torch.randn(7, 2, 8)
    v = torch.randn(7, 2, 8).bfloat16()
    cu_q, cu_k = torch.tensor([0, 3, 4], dtype=torch.int32), torch.tensor([0, 5, 7]).int()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = shared_varlen.varlen_causal_attention(
            q, k, v, cu_q, cu_k, [0, 3, 4], [0, 5, 7], 3, 5, None
        )
    assert seen == [(torch.bfloat16,) * 3] and out.dtype == torch.bfloat16
    shared_varlen.varlen_causal_attention(q, k, v.float(), cu_q, cu_k, [0, 3, 4], [0, 5, 7], 3,
                                          5, None)  # fmt: skip
    assert len(seen) == 1  # float32 without autocast: the sdpa loop


def test_shared_attention_needs_the_shared_forward(tmp_path):
    train = load_train_script()
    with pytest.raises(ValueError, match="--shared_attention chooses how --forward shared"):
        train.main(["--shared_attention", "varlen", "--output_dir", str(tmp_path)])
