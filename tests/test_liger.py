"""--liger: which modules Liger-Kernel's patches reach (CPU; the kernels themselves need CUDA,
tests/test_cuda.py compares the patched model's numbers with the unpatched one's)."""

import importlib.util

import pytest
import torch

from symmpo.train.model import apply_liger, patch_with_liger, tiny_llava
from symmpo.train.tokenizer import build_tokenizer

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
def test_patches_reach_the_language_model_only(restore_llama_module):
    model, _ = tiny_llava(build_tokenizer())
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


def test_refuses_cpu_before_patching(restore_llama_module):
    model, _ = tiny_llava(build_tokenizer())
    before = forward_names(model)
    with pytest.raises(RuntimeError, match="need a CUDA device"):
        apply_liger(model, torch.device("cpu"))
    assert forward_names(model) == before
