"""Correctness on a CUDA device at realistic shapes (marked ``cuda``: skipped without one; run by
benchmarks/device_check.sh with TRITON_INTERPRET=0), against the definitions of docs/math.md."""

import pytest
import torch
from kernel_helpers import assert_error_within

from symmpo import reference, sequence_logps, symmpo_loss

pytestmark = pytest.mark.cuda  # tests/conftest.py skips these without CUDA or when interpreted
V = 32064


def llava_batch(batch, seq_len, dtype, prompt=600, seed=0):
    """Five sequences per example: 600 ignored image+prompt positions, then response targets."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    rows = 5 * batch
    logits = 4 * torch.randn(rows, seq_len, V, device="cuda", generator=gen)
    labels = torch.randint(0, V, (rows, seq_len), device="cuda", generator=gen)
    labels[:, :prompt] = -100
    for i in range(rows):  # ragged right padding
        labels[i, seq_len - 7 * i :] = -100
    ref = -torch.rand(rows, device="cuda", generator=gen) * 500
    return logits.to(dtype), labels, ref


def _grad(logits, labels, ref, impl, **kw):
    x = logits.clone().requires_grad_(True)
    out = symmpo_loss(x, labels, ref, impl=impl, **kw)
    out.loss.backward()
    return out, x.grad


@pytest.mark.parametrize("average", [False, True])
def test_fp32_matches_float64(average):
    logits, labels, ref = llava_batch(2, 800, torch.float32)
    kw = dict(average_log_prob=average, beta=0.2, pair_weight=0.7, margin_weight=0.01, delta=0.1)
    out, grad = _grad(logits, labels, ref, "triton", **kw)
    exact, exact_grad = _grad(logits.double(), labels, ref.double(), "torch", **kw)
    assert abs(out.loss.item() - exact.loss.item()) <= 1e-5 * max(1, abs(exact.loss.item()))
    torch.testing.assert_close(out.policy_logps.double(), exact.policy_logps, rtol=1e-5, atol=1e-4)
    err = (grad.double() - exact_grad).abs().max().item()
    assert err <= 1e-5 * exact_grad.abs().max().item()


def test_bf16_errors_within_torch():
    logits, labels, ref = llava_batch(4, 800, torch.bfloat16)
    out, grad = _grad(logits, labels, ref, "triton")
    eager, eager_grad = _grad(logits, labels, ref, "torch")
    exact, exact_grad = _grad(logits.double(), labels, ref.double(), "torch")
    assert_error_within(out.loss.detach(), eager.loss.detach(), exact.loss.detach(), eps_scale=1e-6)
    assert_error_within(grad, eager_grad, exact_grad)


def test_the_default_step_makes_no_host_sync_and_raises_where_the_caller_looks():
    """Forward and backward of the default path never wait for the GPU; a bad label makes the
    outputs NaN and out.metrics() raises naming it."""
    logits, labels, ref = llava_batch(1, 700, torch.bfloat16)
    x = logits.clone().requires_grad_(True)
    for bad in (False, True):
        if bad:
            labels[3, 650] = V
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = symmpo_loss(x, labels, ref)
            out.loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isnan(out.loss).item() == bad
    with pytest.raises(ValueError, match=rf"labels\[3, 650\] = {V} is outside"):
        out.metrics()


def test_the_fused_step_replays_in_a_cuda_graph():
    """symmpo_loss forward + backward captured once in a CUDA graph and replayed on new values
    gives the eager loss and gradient."""
    logits, labels, ref = llava_batch(1, 700, torch.bfloat16)
    x = logits.clone().requires_grad_(True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (kernel compilation) outside the capture
        symmpo_loss(x, labels, ref).loss.backward()
    torch.cuda.current_stream().wait_stream(stream)
    x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = symmpo_loss(x, labels, ref)
        captured.loss.backward()
    new_logits = torch.randn_like(logits)
    with torch.no_grad():
        x.copy_(new_logits)
    graph.replay()
    eager_x = new_logits.clone().requires_grad_(True)
    eager = symmpo_loss(eager_x, labels, ref)
    eager.loss.backward()
    torch.testing.assert_close(captured.loss, eager.loss)  # float32 atomics: last bits vary
    torch.testing.assert_close(x.grad, eager_x.grad)


def test_bad_labels_with_gradients_raise_in_backward():
    """immediate_checks: the compiled kernels poison every output on a bad label, the forward
    makes no host sync, and backward raises before writing the gradient into the logits
    (inplace_grad); without gradients the call raises."""
    logits, labels, ref = llava_batch(1, 700, torch.bfloat16)
    labels[3, 650] = V
    x = logits.clone().requires_grad_(True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # the forward must not wait for the GPU
    try:
        out = symmpo_loss(x, labels, ref, inplace_grad=True, immediate_checks=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isnan(out.loss) and torch.isnan(out.policy_logps).all()
    with pytest.raises(ValueError, match=rf"labels\[3, 650\] = {V} is outside"):
        out.loss.backward()
    assert torch.equal(x.detach(), logits)
    with torch.no_grad(), pytest.raises(ValueError, match=r"labels\[3, 650\]"):
        symmpo_loss(logits, labels, ref, immediate_checks=True)


def test_ref_logits_inplace_and_non_contiguous():
    logits, labels, ref = llava_batch(1, 700, torch.bfloat16)
    ref_logits = logits + 0.1
    _, grad = _grad(logits, labels, ref, "triton")
    buffer = logits.clone().requires_grad_(True)
    mid = buffer * 1
    symmpo_loss(mid, labels, ref, impl="triton", inplace_grad=True).loss.backward()
    # Equal up to the last bit of bf16: the float32 atomic sums vary in their last bits.
    torch.testing.assert_close(buffer.grad, grad)
    out = symmpo_loss(logits, labels, ref_logits=ref_logits, impl="triton")
    expected = reference.sequence_logps(ref_logits, labels)
    torch.testing.assert_close(out.ref_logps.flatten(), expected, rtol=1e-5, atol=1e-2)
    padded = torch.zeros(*logits.shape[:2], V + 64, device="cuda", dtype=logits.dtype)
    padded[..., :V] = logits
    view = padded[..., :V]
    torch.testing.assert_close(
        sequence_logps(view, labels, impl="triton"), sequence_logps(logits, labels, impl="triton")
    )


def test_more_than_2_31_elements():
    """(5 x 14000) positions x 32064 = 2.24e9 elements: offsets past 2^31 must be exact."""
    rows, seq_len = 5, 14000
    assert rows * seq_len * V > 2**31
    logits = torch.randn(rows, seq_len, V, device="cuda", dtype=torch.bfloat16)
    labels = torch.randint(0, V, (rows, seq_len), device="cuda")
    labels[:, :3] = -100
    x = logits.requires_grad_(True)
    weights = torch.randn(rows, device="cuda")
    logps = sequence_logps(x, labels, impl="triton")
    (logps * weights).sum().backward()
    grad = x.grad
    x = x.detach()
    with torch.no_grad():  # the reference in 1000-position chunks (each chunk + its next label)
        chunk = (
            lambda r, s: reference.sequence_logps(  # noqa: E731
                x[r : r + 1, s : s + 1001], labels[r : r + 1, s : s + 1001]
            )
        )
        expected = torch.cat(
            [sum(chunk(r, s) for s in range(0, seq_len, 1000)) for r in range(rows)]
        )
    torch.testing.assert_close(logps, expected, rtol=2e-5, atol=1e-2)
    # The last positions of the last row live past element 2^31.
    t0 = seq_len - 50
    assert ((rows - 1) * seq_len + t0) * V > 2**31
    tail = x[rows - 1, t0 : seq_len - 1].float()
    probs = torch.softmax(tail, -1)
    onehot = torch.nn.functional.one_hot(labels[rows - 1, t0 + 1 :], V).float()
    expected_grad = weights[rows - 1] * (onehot - probs)
    torch.testing.assert_close(
        grad[rows - 1, t0 : seq_len - 1].float(), expected_grad, rtol=1e-2, atol=1e-5
    )
    assert torch.all(grad[:, :2] == 0) and torch.all(grad[:, -1] == 0)


def _hidden_case(dtype, batch=2, seq_len=400, hidden=1024, targets=150, seed=1):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    h = torch.randn(5 * batch, seq_len, hidden, device="cuda", generator=gen, dtype=torch.float64)
    w = torch.randn(V, hidden, device="cuda", generator=gen, dtype=torch.float64) / hidden**0.5
    labels = torch.randint(0, V, (5 * batch, seq_len), device="cuda", generator=gen)
    labels[:, : seq_len - targets] = -100
    labels[3, seq_len - 1 :] = -100  # ragged
    ref = -torch.rand(5 * batch, device="cuda", generator=gen) * 1000
    return h, w, labels, ref


def _hidden_run(h, w, labels, ref, fused, **kw):
    from symmpo import symmpo_loss_from_hidden

    h, w = (t.detach().clone().requires_grad_(True) for t in (h, w))
    if fused:
        out = symmpo_loss_from_hidden(h, w, labels, ref, impl="triton", **kw)
    else:
        out = symmpo_loss(h @ w.t(), labels, ref.to(h.dtype), impl="torch")
    out.loss.backward()
    return out.loss.detach(), h.grad, w.grad


def test_fused_linear_fp32_matches_float64():
    h, w, labels, ref = _hidden_case(torch.float64)
    exact = _hidden_run(h, w, labels, ref, fused=False)
    got = _hidden_run(h.float(), w.float(), labels, ref, fused=True, chunk_bytes=64 * 2**20)
    assert abs(got[0].item() - exact[0].item()) <= 1e-4 * max(1, abs(exact[0].item()))
    for g, e in zip(got[1:], exact[1:], strict=True):
        # tf32 is off by default for matmuls in torch: float32 arithmetic, 1e-4 relative.
        assert (g.double() - e).norm() / e.norm() < 1e-4


def test_fused_linear_bf16_errors_within_torch():
    h, w, labels, ref = _hidden_case(torch.float64, batch=4, hidden=4096, targets=200)
    exact = _hidden_run(h, w, labels, ref, fused=False)
    low = [t.to(torch.bfloat16) for t in (h, w)]
    eager = _hidden_run(*low, labels, ref, fused=False)
    got = _hidden_run(*low, labels, ref, fused=True)
    for g, e, x in zip(got[1:], eager[1:], exact[1:], strict=True):
        g_err = (g.double() - x).norm() / x.norm()
        e_err = (e.double() - x).norm() / x.norm()
        assert g_err <= 1.5 * e_err + 1e-3, (g_err, e_err)


def test_fused_linear_with_host_labels_makes_no_host_sync():
    """symmpo_loss_from_hidden with the labels on the host: forward and backward (the
    gradients scaled by grad_output) never wait for the GPU and equal the call given CUDA
    labels (which copies them to the host once); a non-finite reference gives NaN and
    out.metrics() raises naming it."""
    from symmpo import symmpo_loss_from_hidden

    h, w, labels, ref = _hidden_case(torch.float32)
    h, w, host = h.float(), w.float(), labels.cpu()
    loss, grad_h, grad_w = _hidden_run(h, w, labels, ref, fused=True)
    for bad in (False, True):
        if bad:
            ref[7] = float("nan")
        x, wx = (t.clone().requires_grad_(True) for t in (h, w))
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = symmpo_loss_from_hidden(x, wx, host, ref, impl="triton")
            (2.0 * out.loss).backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isnan(out.loss).item() == bad
        if not bad:  # float32 atomics: the last bits may differ
            torch.testing.assert_close(out.loss.detach(), loss)
            torch.testing.assert_close(x.grad, 2.0 * grad_h)
            torch.testing.assert_close(wx.grad, 2.0 * grad_w)
    with pytest.raises(ValueError, match=r"ref_logps holds non-finite values .*row 7"):
        out.metrics()


def _tiny_model_and_batch():
    """The tiny default LLaVA in float32 on CUDA and a collated batch of 4 synthetic examples."""
    from symmpo.train.collator import PreferenceCollator
    from symmpo.train.data import records_from_rows
    from symmpo.train.model import num_image_tokens, tiny_llava
    from symmpo.train.synthetic import make_synthetic_records
    from symmpo.train.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    model, processor = tiny_llava(tokenizer, seed=0)
    model = model.cuda().float()
    collator = PreferenceCollator(
        tokenizer, processor, model.config.image_token_id, num_image_tokens(model.config)
    )
    return model, collator(records_from_rows(make_synthetic_records(4, seed=2))[0])


@pytest.mark.parametrize("attention", ["mask", "varlen"])
def test_shared_prefix_forward_matches_naive_on_cuda(attention):
    from symmpo.train.forwards import score_batch
    from symmpo.train.model import naive_forward
    from symmpo.train.shared_prefix import shared_forward

    model, batch = _tiny_model_and_batch()
    naive = score_batch(model, batch, average=False, forward=naive_forward)
    if attention == "varlen":  # float32: the varlen route's reference kernels on CUDA
        from symmpo.train.shared_varlen import use_varlen_attention

        use_varlen_attention(model)
    shared = score_batch(model, batch, average=False, forward=shared_forward)
    torch.testing.assert_close(shared, naive, rtol=1e-4, atol=1e-3)


def _flash_or_skip():
    from symmpo.train import varlen_kernels

    probe = torch.zeros(1, 1, 64, dtype=torch.bfloat16, device="cuda")
    if not varlen_kernels.flash_supported(probe):
        pytest.skip("PyTorch's flash-attention does not run on this GPU")
    return varlen_kernels


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kv_heads", [8, 2])
def test_flash_kernels_match_the_reference(causal, kv_heads):
    """--shared_attention varlen's CUDA kernels (PyTorch's flash-attention) on bf16 against the
    float32 reference: out, lse (H, T_q), and the backward given each one's out and lse;
    R-token queries on P + R keys, aligned bottom-right when causal."""
    kernels = _flash_or_skip()
    gen = torch.Generator(device="cuda").manual_seed(0)
    q_lengths, k_lengths = torch.tensor([150, 1, 37]), torch.tensor([750, 601, 640])
    seqs = kernels.VarlenSequences.from_lengths(q_lengths, k_lengths).to("cuda")
    q = torch.randn(int(q_lengths.sum()), 8, 64, device="cuda", generator=gen)
    k, v = (
        torch.randn(int(k_lengths.sum()), kv_heads, 64, device="cuda", generator=gen)
        for _ in range(2)
    )
    dout = torch.randn_like(q)
    results = []
    for impl, dtype in ((kernels.FLASH, torch.bfloat16), (kernels.REFERENCE, torch.float32)):
        inputs = [t.to(dtype) for t in (q, k, v)]
        out, lse, state = impl.forward(*inputs, seqs, causal, 0.125)
        grads = impl.backward(dout.to(dtype), *inputs, out, lse, seqs, causal, 0.125, state)
        assert lse.shape == (8, q.shape[0]) and lse.dtype == torch.float32
        results.append([out.float(), lse, *(g.float() for g in grads)])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("kv_heads", [8, 2])
def test_shared_prefix_attention_with_flash_matches_gathered_sdpa(kv_heads):
    """The merged attention on CUDA (two flash calls, merged by lse; each flash backward given
    the merged out and lse) in bf16 against sdpa on gathered keys in float32: LLaVA-like
    prefixes (P = 620) with three and two responses."""
    _flash_or_skip()
    from varlen_oracle import packed_segments, shared_attention_oracle

    from symmpo.train.shared_varlen import SharedPrefixAttention, build_varlen_layout

    prefixes, responses = [620, 620, 600], [[150, 140, 9], [1, 160], [33, 70, 150]]
    layout, _ = build_varlen_layout(packed_segments(prefixes, responses))
    n = sum(prefixes) + sum(map(sum, responses))
    gen = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(n, 8, 128, device="cuda", generator=gen)  # LLaVA-1.5's head size
    k, v = (torch.randn(n, kv_heads, 128, device="cuda", generator=gen) for _ in range(2))
    dout = torch.randn_like(q)
    results = []
    for dtype in (torch.bfloat16, torch.float32):
        leaves = [t.to(dtype).requires_grad_(True) for t in (q, k, v)]
        if dtype == torch.bfloat16:
            out = SharedPrefixAttention.apply(*leaves, layout.to("cuda"), 128**-0.5)
        else:
            out = shared_attention_oracle(*leaves, prefixes, responses, 128**-0.5)
        out.backward(dout.to(dtype))
        results.append([out.float(), *(t.grad.float() for t in leaves)])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_shared_varlen_route_with_the_cuda_kernel_under_autocast(monkeypatch):
    """--shared_attention varlen as full fine-tuning runs it (float32 weights, bf16 autocast):
    the flash kernels (never the reference) give the naive forward's log-probs within bf16
    attention rounding."""
    varlen_kernels = _flash_or_skip()
    from symmpo.train import shared_varlen
    from symmpo.train.forwards import score_batch
    from symmpo.train.model import naive_forward
    from symmpo.train.shared_prefix import shared_forward

    chosen = []
    real_kernels_for = shared_varlen.kernels_for
    monkeypatch.setattr(
        shared_varlen, "kernels_for", lambda q: chosen.append(real_kernels_for(q)) or chosen[-1]
    )
    model, batch = _tiny_model_and_batch()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        naive = score_batch(model, batch, average=True, forward=naive_forward)
        shared_varlen.use_varlen_attention(model)
        varlen = score_batch(model, batch, average=True, forward=shared_forward)
    assert chosen and all(kernels is varlen_kernels.FLASH for kernels in chosen)
    torch.testing.assert_close(varlen, naive, rtol=0.0, atol=0.05)  # mean log-prob per token


def test_liger_patches_keep_the_model_numerics():
    """--liger on CUDA: the tiny model with Liger's RMSNorm/SwiGLU/RoPE gives the unpatched
    model's log-probs and LoRA-free parameter gradients within float32 kernel rounding."""
    import copy

    pytest.importorskip("liger_kernel")
    from transformers.models.llama import modeling_llama

    from symmpo.train.model import patch_with_liger, tiny_llava
    from symmpo.train.tokenizer import build_tokenizer

    saved = dict(vars(modeling_llama))
    try:
        torch.manual_seed(0)
        model, _ = tiny_llava(build_tokenizer())
        model = model.cuda().float()
        patched = copy.deepcopy(model)
        cfg = model.config
        side = cfg.vision_config.image_size
        n_image = (side // cfg.vision_config.patch_size) ** 2
        gen = torch.Generator(device="cuda").manual_seed(1)
        ids = torch.randint(5, 200, (3, 40), device="cuda", generator=gen)
        ids[:, 1 : 1 + n_image] = cfg.image_token_id
        pixels = torch.randn(3, 3, side, side, device="cuda", generator=gen)
        labels = ids.clone()
        labels[:, : 1 + n_image] = -100
        outputs = []
        for m in (model, patched):  # the plain model first: Liger's RoPE is process-wide
            if m is patched:
                patch_with_liger(patched)
            logps = sequence_logps(m(input_ids=ids, pixel_values=pixels).logits, labels)
            logps.sum().backward()
            outputs.append((logps, m.model.language_model.layers[0].mlp.up_proj.weight.grad))
        (a, grad_a), (b, grad_b) = outputs
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(grad_b, grad_a, rtol=1e-3, atol=1e-4)
    finally:
        for name, value in saved.items():
            setattr(modeling_llama, name, value)
