"""symmpo.train.model: the naive forward, loading a checkpoint folder with its attention
choice, the Liger patches (CPU), and the step's memory savers, which change no number: frozen
image features carry no graph, and a step with peft's input casts off and the backward outside
autocast gives the same bits."""

import copy
import importlib.util

import pytest
import torch

from symmpo import SymMPOConfig
from symmpo.train import model as model_module
from symmpo.train.model import (
    add_lora,
    apply_liger,
    embed_with_images,
    image_features,
    lora_inputs_uncast,
    naive_forward,
    patch_with_liger,
    unwrap,
)
from symmpo.train.objectives import compute_loss
from symmpo.train.shared_prefix import shared_forward


def test_vision_tower_sees_2b_images(tiny, make_collator, make_records):
    model = tiny[1]
    seen = []
    hook = unwrap(model).model.vision_tower.register_forward_hook(
        lambda module, args, out: seen.append(args[0].shape[0])
    )
    try:
        naive_forward(model, make_collator()(make_records(3)))
    finally:
        hook.remove()
    assert seen == [6]


def test_checkpoint_loads_with_the_attention_chosen_per_sub_model(tiny_checkpoint, monkeypatch):
    """build_policy hands attention_implementation's per-sub-config choice (as with flash-attn
    installed and the shared-prefix forward) to from_pretrained."""
    folder = tiny_checkpoint
    asked = []

    def choose(device, shared_prefix=False):
        asked.append(shared_prefix)
        return {"text_config": "sdpa", "vision_config": "eager"} if shared_prefix else "eager"

    monkeypatch.setattr(model_module, "attention_implementation", choose)
    shared, *_ = model_module.build_policy(str(folder), 0, torch.device("cpu"), False, True)
    plain, *_ = model_module.build_policy(str(folder), 0, torch.device("cpu"), False)
    assert asked == [True, False]
    assert shared.config.text_config._attn_implementation == "sdpa"
    assert shared.config.vision_config._attn_implementation == "eager"
    assert plain.config.text_config._attn_implementation == "eager"


def test_flash_attn_installed_keeps_sdpa_for_the_shared_language_model(monkeypatch):
    """With flash-attn on CUDA, --forward shared loads the language model with sdpa (its 4-D
    mask) and the vision tower with flash-attention; other runs use flash-attention."""

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        model_module.importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "flash_attn" else real_find_spec(name, *a),
    )
    assert model_module.attention_implementation(cuda) == "flash_attention_2"
    assert model_module.attention_implementation(cuda, shared_prefix=True) == {
        "text_config": "sdpa",
        "vision_config": "flash_attention_2",
    }
    assert model_module.attention_implementation(cpu, shared_prefix=True) == "sdpa"


# -- --liger: which modules Liger-Kernel's patches reach (CPU; the kernels themselves need CUDA,
# tests/test_cuda.py compares the patched model's numbers with the unpatched one's)

needs_liger = pytest.mark.skipif(
    importlib.util.find_spec("liger_kernel") is None, reason="liger-kernel (bench extra)"
)


@pytest.fixture
def restore_llama_module():
    """Liger patches transformers' Llama module process-wide (RoPE function, RMSNorm class):
    put every attribute back afterwards so that later tests build plain models."""
    from transformers.models.llama import modeling_llama

    saved = dict(vars(modeling_llama))
    yield modeling_llama
    for name in set(vars(modeling_llama)) - set(saved):
        delattr(modeling_llama, name)
    for name, value in saved.items():
        setattr(modeling_llama, name, value)


def forward_names(model):
    return {name: module.forward.__qualname__ for name, module in model.named_modules()}


@needs_liger
def test_patches_reach_the_language_model_only(restore_llama_module, make_tiny):
    model = make_tiny()[1]
    plain_rope = restore_llama_module.apply_rotary_pos_emb
    before = forward_names(model)
    patch_with_liger(model)
    after = forward_names(model)

    changed = {name for name in after if after[name] != before[name]}
    layers = model.config.text_config.num_hidden_layers
    expected = {"model.language_model.norm"} | {
        f"model.language_model.layers.{i}.{part}"
        for i in range(layers)
        for part in ("mlp", "input_layernorm", "post_attention_layernorm")
    }
    assert changed == expected  # nothing in the vision tower, projector, attention or lm_head
    assert all(after[n].startswith(("LigerRMSNorm.", "LigerSwiGLUMLP.")) for n in changed)
    assert restore_llama_module.apply_rotary_pos_emb is not plain_rope


def test_refuses_cpu_before_patching(restore_llama_module, make_tiny):
    model = make_tiny()[1]
    before = forward_names(model)
    with pytest.raises(RuntimeError, match="need a CUDA device"):
        apply_liger(model, torch.device("cpu"))
    assert forward_names(model) == before


# -- the step's memory savers


@pytest.fixture(scope="module")
def memory_case(make_tiny, make_collator, make_records):
    """The tiny LLaVA of seed 5 and a collated batch of two synthetic examples."""
    tokenizer, model, processor = make_tiny(seed=5)
    collator = make_collator(tiny=(tokenizer, model, processor))
    batch = collator(make_records(2, seed=4))
    return model, batch


def lora_policy(model, dtype=torch.float32):
    policy = add_lora(copy.deepcopy(model).to(dtype), r=4, alpha=8, dropout=0.0)
    # Checkpointing with peft installs the input-grad hooks that pull the vision tower into the
    # graph unless image_features keeps it out.
    policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return policy.train()


def test_frozen_towers_give_features_without_a_graph(memory_case):
    model, batch = memory_case
    policy = lora_policy(model)
    llava = policy.get_base_model()
    features = image_features(llava, batch["pixel_values"])
    assert not features.requires_grad
    # Reference: the same call with grad, as transformers' own forward makes it.
    out = llava.model.get_image_features(pixel_values=batch["pixel_values"])
    out = getattr(out, "pooler_output", out)
    with_graph = torch.stack(list(out)) if isinstance(out, (list, tuple)) else out
    assert with_graph.requires_grad  # the hooks: without image_features' no_grad there is a graph
    torch.testing.assert_close(features, with_graph.detach(), rtol=0, atol=0)


def test_a_training_projector_still_gets_its_gradient(memory_case):
    model, batch = memory_case
    llava = copy.deepcopy(model).float()
    llava.requires_grad_(False)
    llava.model.multi_modal_projector.requires_grad_(True)
    features = image_features(llava, batch["pixel_values"])
    assert features.requires_grad
    features.square().sum().backward()
    grads = [p.grad for p in llava.model.multi_modal_projector.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def step_grads(policy, batch, uncast: bool, backward_in_autocast: bool):
    """Loss and LoRA gradients of one bf16-autocast step on the CPU."""
    policy.zero_grad(set_to_none=True)
    ref = torch.zeros(batch["input_ids"].shape[0])
    with lora_inputs_uncast(policy, active=uncast):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = compute_loss(
                policy, batch, ref, "symmpo", SymMPOConfig(), forward=shared_forward
            ).loss
            if backward_in_autocast:
                loss.backward()
        if not backward_in_autocast:
            loss.backward()
    grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def test_uncast_lora_inputs_and_backward_outside_autocast_give_the_same_bits(memory_case):
    model, batch = memory_case
    policy = lora_policy(model, dtype=torch.bfloat16)  # bf16 weights, float32 adapters
    adapters = [p for p in policy.parameters() if p.requires_grad]
    assert adapters and all(p.dtype == torch.float32 for p in adapters)
    with torch.no_grad():  # non-zero lora_B, so that every adapter gets a gradient
        for p in adapters:
            p.add_(0.05 * torch.randn_like(p))
    loss_before, grads_before = step_grads(policy, batch, uncast=False, backward_in_autocast=True)
    loss_after, grads_after = step_grads(policy, batch, uncast=True, backward_in_autocast=False)
    assert torch.equal(loss_before, loss_after)
    assert grads_before.keys() == grads_after.keys()
    for name, grad in grads_before.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grads_after[name], grad, rtol=0, atol=0, msg=name)


def test_uncast_is_scoped_to_the_context(memory_case):
    model, _ = memory_case
    policy = lora_policy(model)
    layers = [m for m in policy.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert layers
    with lora_inputs_uncast(policy, active=True):
        assert not any(m.cast_input_dtype_enabled for m in layers)
    assert all(m.cast_input_dtype_enabled for m in layers)
    with lora_inputs_uncast(policy, active=False):
        assert all(m.cast_input_dtype_enabled for m in layers)


def test_pixels_that_need_a_gradient_get_one_through_frozen_towers(memory_case):
    model, batch = memory_case
    policy = lora_policy(model)
    pixels = batch["pixel_values"].clone().requires_grad_(True)
    features = image_features(policy.get_base_model(), pixels)
    assert features.requires_grad
    features.square().sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_hooked_embeddings_are_not_kept_for_a_gradient_nobody_reads(memory_case):
    """Under checkpointing peft's frozen embedding table hands out a leaf that requires grad;
    embed_with_images makes its own output that leaf (the first layer's input still requires
    grad) instead of holding the table's output for a gradient. Same values as the plain
    masked_scatter, and a step gives the LoRA gradients of a policy without the hook."""
    model, batch = memory_case
    policy = lora_policy(model)
    llava = policy.get_base_model()
    ids = batch["shared"]["input_ids"]
    features = image_features(llava, batch["pixel_values"])
    hooked = llava.get_input_embeddings()(ids)
    assert hooked.requires_grad and hooked.is_leaf  # what the hook does
    embeds = embed_with_images(llava, ids, features)
    assert embeds.requires_grad and embeds.is_leaf and embeds.grad_fn is None
    image_positions = (ids == llava.config.image_token_id).unsqueeze(-1)
    torch.testing.assert_close(
        embeds, hooked.detach().masked_scatter(image_positions, features), rtol=0, atol=0
    )

    ref = -torch.rand(10, generator=torch.Generator().manual_seed(0)) * 30

    def lora_grads(policy):
        policy.zero_grad(set_to_none=True)
        out = compute_loss(policy, batch, ref, "symmpo", SymMPOConfig(), forward=shared_forward)
        out.loss.backward()
        return {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}

    unhooked = add_lora(copy.deepcopy(model).float(), r=4, alpha=8, dropout=0.0).train()
    unhooked.load_state_dict(policy.state_dict())
    want, got = lora_grads(unhooked), lora_grads(policy)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7)
