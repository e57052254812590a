"""Greedy answers of a LLaVA model to (question, image) pairs, decoded for people to read."""

from __future__ import annotations

import torch

from ..train.model import unwrap
from ..train.tokenizer import readable_decode


@torch.no_grad()
def generate_answers(model, collator, questions, images, max_new_tokens: int = 48) -> list[str]:
    """Greedy answers of the LLaVA ``model`` (peft-wrapped or not) to (question, PIL image)
    pairs, one pair at a time, in the collator's prompt format.

    Each answer is the text of the generated tokens after the prompt, special tokens skipped,
    stripped of surrounding whitespace; bytes that are not valid UTF-8 (an untrained model's
    stray byte tokens) are written ``<0xNN>`` instead of U+FFFD (see
    ``symmpo.train.tokenizer.readable_decode``)."""
    llava = unwrap(model)
    device = llava.lm_head.weight.device
    tokenizer = collator.tokenizer
    answers = []
    for question, image in zip(questions, images, strict=True):
        ids = torch.tensor([collator.encode_prompt(question)], device=device)
        pixels = collator.pixel_values([image])
        out = llava.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=pixels.to(device, llava.dtype),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=collator.pad_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        answers.append(readable_decode(tokenizer, out[0, ids.shape[1] :].tolist()).strip())
    return answers
