"""A run's model in the Hugging Face format, for ``from_pretrained`` and the rest of the stack.

Every checkpoint folder holds ``hf/``: under LoRA the peft adapter folder
(``adapter_config.json``, ``adapter_model.safetensors``: load it with
``PeftModel.from_pretrained(base_model, folder)``), otherwise the whole model (``config.json``,
``model.safetensors``: ``LlavaForConditionalGeneration.from_pretrained(folder)``); with the
tokenizer and the image processor as one ``LlavaProcessor`` (``AutoProcessor.from_pretrained``).
``--merge_lora`` writes ``<output_dir>/merged/`` at the end: the base model with the adapters
merged into its weights, a plain LLaVA checkpoint.

The folder is written inside the checkpoint's temporary folder, so the manifest seals it with the
rest and the rename publishes it whole.
"""

from __future__ import annotations

import pathlib

from .model import unwrap


def peft_model(model):
    """The peft wrapper inside DDP-like wrappers, or None when the model has no adapters."""
    while hasattr(model, "module") and not hasattr(model, "get_base_model"):
        model = model.module
    return model if hasattr(model, "get_base_model") else None


def save_processor(tokenizer, image_processor, llava, folder) -> None:
    """The tokenizer and image processor as a LlavaProcessor in ``folder``."""
    from transformers import LlavaProcessor

    LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=llava.config.vision_config.patch_size,
        vision_feature_select_strategy=llava.config.vision_feature_select_strategy,
    ).save_pretrained(folder)


def save_hf(model, tokenizer, image_processor, folder, state_dict=None) -> pathlib.Path:
    """``model`` (peft-wrapped or not) in the Hugging Face format into ``folder``: its adapters
    under LoRA, the whole model otherwise, with the processor. ``state_dict``: the weights to
    write when the model's own are partitioned (DeepSpeed ZeRO-3 gathers them)."""
    folder = pathlib.Path(folder)
    llava = unwrap(model)
    target = peft_model(model) or llava
    target.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    save_processor(tokenizer, image_processor, llava, folder)
    return folder


def save_merged(model, tokenizer, image_processor, folder) -> pathlib.Path:
    """The base model with the LoRA adapters merged in, as a plain LLaVA checkpoint in
    ``folder``; the training model itself is left unchanged (a merged copy is written)."""
    import copy

    folder = pathlib.Path(folder)
    wrapped = peft_model(model)
    if wrapped is None:
        raise ValueError("--merge_lora needs a LoRA run (--lora)")
    merged = copy.deepcopy(wrapped).merge_and_unload()
    merged.save_pretrained(folder, safe_serialization=True)
    save_processor(tokenizer, image_processor, merged, folder)
    return folder
