"""Model loading (a tiny LLaVA built from a config, or a real checkpoint), LoRA through peft,
and the naive forward: one language-model pass over all K*B sequences, each image encoded once.
"""

from __future__ import annotations

import contextlib
import importlib.util

import torch

#: The released LoRA recipe (LLaVA-1.5's finetune_lora, which SymMPO's scripts reuse).
LORA_PRESET = dict(r=128, alpha=256, dropout=0.05)
#: Every linear layer of the language model (not the vision tower or the projector).
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def attention_implementation(device: torch.device, shared_prefix: bool = False) -> str | dict:
    """flash_attention_2 when flash-attn imports on CUDA, else PyTorch's sdpa.

    The shared-prefix forward needs an attention that takes its 4-D mask: with flash-attn
    installed, the vision tower keeps flash-attention and the language model gets sdpa.
    """
    if device.type != "cuda" or importlib.util.find_spec("flash_attn") is None:
        return "sdpa"
    if shared_prefix:
        return {"text_config": "sdpa", "vision_config": "flash_attention_2"}
    return "flash_attention_2"


@contextlib.contextmanager
def whole_model_init():
    """Build a model whole even when DeepSpeed ZeRO-3 is configured.

    Under ZeRO-3 transformers builds each sub-model of a LLaVA under ``deepspeed.zero.Init``;
    the composite's weight init then indexes a partitioned (empty) embedding, an IndexError with
    two or more processes. A small model built whole draws the same weights as without DeepSpeed,
    and the engine partitions it when it wraps it.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def tiny_llava(tokenizer, image_size: int = 64, patch_size: int = 16, seed: int = 0):
    """A random-weight LlavaForConditionalGeneration (CLIP vision tower + Llama) and its
    CLIPImageProcessor, small enough to train on a laptop CPU in minutes."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    vision = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=64,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    with whole_model_init():
        model = LlavaForConditionalGeneration(config)
    try:  # transformers >= 5.2x: the PIL backend by name (no torchvision needed)
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor
    processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return model, processor


def load_llava(
    name_or_path: str, dtype: torch.dtype, device: torch.device, shared_prefix: bool = False
):
    """(model, tokenizer, image_processor) from a local folder or an already cached hub name;
    nothing is downloaded. ``shared_prefix``: the model will run the shared-prefix forward."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(name_or_path, local_files_only=True)
    model = LlavaForConditionalGeneration.from_pretrained(
        name_or_path,
        dtype=dtype,
        local_files_only=True,
        attn_implementation=attention_implementation(device, shared_prefix),
    )
    tokenizer = processor.tokenizer
    if getattr(processor, "chat_template", None) and not tokenizer.chat_template:
        tokenizer.chat_template = processor.chat_template  # --template processor reads it here
    return model, tokenizer, processor.image_processor


def build_policy(
    model_name_or_path: str | None, seed: int, device, use_bf16: bool, shared_prefix: bool = False
):
    """(model, tokenizer, image_processor, identity): the tiny default built from a config when
    ``model_name_or_path`` is None, else a LLaVA checkpoint. ``identity`` enters the reference
    cache's fingerprint."""
    if model_name_or_path is None:
        from .tokenizer import build_tokenizer

        tokenizer = build_tokenizer()
        model, image_processor = tiny_llava(tokenizer, seed=seed)
        identity = {"tiny": seed, "config": model.config.to_json_string()}
    else:
        dtype = torch.bfloat16 if use_bf16 else torch.float32
        model, tokenizer, image_processor = load_llava(
            model_name_or_path, dtype, device, shared_prefix
        )
        identity = {"path": model_name_or_path, "config": model.config.to_json_string()}
    return model.to(device), tokenizer, image_processor, identity


def apply_liger(model, device) -> None:
    """Liger-Kernel's LLaVA patches of the language model (RMSNorm, SwiGLU, RoPE), in place.

    The loss stays this library's: Liger's cross-entropy variants are left off. CUDA only.
    """
    if device.type != "cuda":
        raise RuntimeError(
            "--liger patches the model with Liger-Kernel's Triton kernels, which "
            "need a CUDA device; run without --liger on the CPU"
        )
    patch_with_liger(model)


def patch_with_liger(model) -> None:
    """The patches themselves, whatever the device: each RMSNorm and MLP of the language model
    gets Liger's forward, and transformers' Llama module its RoPE function and RMSNorm class
    (process-wide, as Liger does). The vision tower and the projector are left alone."""
    from liger_kernel.transformers import apply_liger_kernel_to_llava

    apply_liger_kernel_to_llava(
        rope=True,
        rms_norm=True,
        swiglu=True,
        cross_entropy=False,
        fused_linear_cross_entropy=False,
        model=unwrap(model),
    )


def num_image_tokens(config) -> int:
    """Patch features per image: (image_size / patch_size)^2, +1 with the "full" strategy."""
    vision = config.vision_config
    n = (vision.image_size // vision.patch_size) ** 2
    return n + (1 if getattr(config, "vision_feature_select_strategy", "default") == "full" else 0)


def add_lora(model, r: int, alpha: int, dropout: float, targets: str = LORA_TARGETS):
    """Wrap ``model`` with peft LoRA adapters on the language model's linear layers."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
    return get_peft_model(model, config)


def lora_inputs_uncast(model, active: bool):
    """Context: peft's LoRA layers take their input as it comes instead of casting it to the
    adapters' dtype first. Use it around the forward and backward of a step under bf16 autocast
    with float32 adapters: there the cast makes a float32 copy of every LoRA layer's input
    (saved for backward: 4 bytes x tokens x in_features, 350 MB for an 11008-wide projection at
    8k tokens) that autocast's matmul casts straight back to bf16. Without LoRA dropout the
    results are the same bits; with it, dropout draws its mask on the bf16 input instead, so
    the mask (not its distribution) differs. Without autocast (``active=False``) the cast is
    needed and stays."""
    if not active:
        return contextlib.nullcontext()
    from peft.helpers import disable_input_dtype_casting

    return disable_input_dtype_casting(model)


def unwrap(model):
    """The LlavaForConditionalGeneration inside DDP / peft wrappers (or the model itself)."""
    while hasattr(model, "module") and not hasattr(model, "get_base_model"):
        model = model.module  # DistributedDataParallel and similar wrappers
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def image_features(llava, pixel_values: torch.Tensor) -> torch.Tensor:
    """(n_images, n_image_tokens, D) projected features, one vision-tower pass per image.

    Without grad when no parameter of the vision tower or the projector trains (LoRA on the
    language model, say) and the pixels need no gradient: the features are constants then.
    Otherwise the input-grad hooks that gradient checkpointing installs make the tower record a
    graph: its checkpointed layer outputs held through the step (400 MiB for 8 CLIP-L images)
    and a wasted backward pass. Towers whose parameters are not visible here (a wrapper that
    flattens them) count as training.
    """
    towers = (llava.model.vision_tower, llava.model.multi_modal_projector)
    params = [p for tower in towers for p in tower.parameters()]
    needs_graph = not params or pixel_values.requires_grad or any(p.requires_grad for p in params)
    with torch.set_grad_enabled(torch.is_grad_enabled() and needs_graph):
        out = llava.model.get_image_features(pixel_values=pixel_values)
    out = getattr(out, "pooler_output", out)
    return torch.stack(list(out)) if isinstance(out, (list, tuple)) else out


def embed_with_images(llava, ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Token embeddings of ``ids`` with ``features`` (n_images, n_image_tokens, D) written at
    the image tokens, image after image in the order the tokens come (row-major).

    With a frozen embedding table under gradient checkpointing, transformers' input-grad hook
    (``enable_input_require_grads``, for reentrant checkpointing) turns the table's output into
    a leaf that requires grad: kept until the end of the backward, which then writes its
    gradient (tokens x H each, never read). The features are then written into that output in
    place and the result is made the leaf instead: the same values, the first layer's input
    still requires grad, one tokens x H tensor less at the peak.
    """
    embeds = llava.get_input_embeddings()(ids)
    image_positions = (ids == llava.config.image_token_id).unsqueeze(-1)
    features = features.to(embeds.dtype)
    if embeds.requires_grad and embeds.grad_fn is None:  # the hook's leaf
        merged = embeds.detach().masked_scatter_(image_positions, features)
        return merged if merged.requires_grad else merged.requires_grad_()
    return embeds.masked_scatter(image_positions, features)


def naive_forward(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden (K*B, L, H), labels (K*B, L)): every sequence in full, in one language-model pass.
    The labels are returned on the host, where the hidden-state losses plan their target
    positions without waiting for the GPU (labels that DDP or a Trainer moved to the GPU are
    copied back first, before any of the model's work is queued).

    Each of the batch's distinct images goes through the vision tower once; its features are
    placed at the image tokens of every sequence that uses it (``image_index``).
    """
    labels = batch["labels"].cpu()
    llava = unwrap(model)
    device = llava.lm_head.weight.device
    input_ids = batch["input_ids"].to(device)
    features = image_features(llava, batch["pixel_values"].to(device, llava.dtype))
    embeds = embed_with_images(llava, input_ids, features[batch["image_index"].to(device)])
    out = llava.model.language_model(
        inputs_embeds=embeds, attention_mask=batch["attention_mask"].to(device)
    )
    return out.last_hidden_state, labels
