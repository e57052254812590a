"""The step's memory savers change no number: frozen image features carry no graph, and a step
with peft's input casts off and the backward outside autocast gives the same bits."""

import copy

import pytest
import torch

from symmpo import SymMPOConfig
from symmpo.train.collator import PreferenceCollator
from symmpo.train.data import records_from_rows
from symmpo.train.model import (
    add_lora,
    embed_with_images,
    image_features,
    lora_inputs_uncast,
    num_image_tokens,
    tiny_llava,
)
from symmpo.train.objectives import compute_loss
from symmpo.train.shared_prefix import shared_forward
from symmpo.train.synthetic import make_synthetic_records
from symmpo.train.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer()
    model, processor = tiny_llava(tokenizer, seed=5)
    collator = PreferenceCollator(
        tokenizer, processor, model.config.image_token_id, num_image_tokens(model.config)
    )
    batch = collator(records_from_rows(make_synthetic_records(2, seed=4))[0])
    return model, batch


def lora_policy(model, dtype=torch.float32):
    policy = add_lora(copy.deepcopy(model).to(dtype), r=4, alpha=8, dropout=0.0)
    # Checkpointing with peft installs the input-grad hooks that pull the vision tower into the
    # graph unless image_features keeps it out.
    policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return policy.train()


def test_frozen_towers_give_features_without_a_graph(tiny):
    model, batch = tiny
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


def test_a_training_projector_still_gets_its_gradient(tiny):
    model, batch = tiny
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


def test_uncast_lora_inputs_and_backward_outside_autocast_give_the_same_bits(tiny):
    model, batch = tiny
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


def test_uncast_is_scoped_to_the_context(tiny):
    model, _ = tiny
    policy = lora_policy(model)
    layers = [m for m in policy.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert layers
    with lora_inputs_uncast(policy, active=True):
        assert not any(m.cast_input_dtype_enabled for m in layers)
    assert all(m.cast_input_dtype_enabled for m in layers)
    with lora_inputs_uncast(policy, active=False):
        assert all(m.cast_input_dtype_enabled for m in layers)


def test_pixels_that_need_a_gradient_get_one_through_frozen_towers(tiny):
    model, batch = tiny
    policy = lora_policy(model)
    pixels = batch["pixel_values"].clone().requires_grad_(True)
    features = image_features(policy.get_base_model(), pixels)
    assert features.requires_grad
    features.square().sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_hooked_embeddings_are_not_kept_for_a_gradient_nobody_reads(tiny):
    """Under checkpointing peft's frozen embedding table hands out a leaf that requires grad;
    embed_with_images makes its own output that leaf (the first layer's input still requires
    grad) instead of holding the table's output for a gradient. Same values as the plain
    masked_scatter, and a step gives the LoRA gradients of a policy without the hook."""
    model, batch = tiny
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
