"""An independent transcription of the released SymMPO preprocessing and reference pass, step by
step as the released training runs them (read from its public code: the ``llava_v1``
conversation, ``preprocess_v1`` with ``has_image=True``, the image-token tokenizer, LLaVA's
image-feature splice and its truncation to ``model_max_length``, and the reference pass's
per-token log-probs), for tests to compare the library's templates, collator and check against.

It deliberately follows the released steps literally (string splits, offsets, the "every label
masked" fallback) rather than the library's formulation of the same rule.
"""

from __future__ import annotations

import json

import torch

SYSTEM_SENTENCE = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
IMAGE_PLACEHOLDER_ID = -200  # the released code's stand-in id for the image
IGNORE = -100


def conversation_text(question: str, answer: str) -> str:
    """The v1 conversation's prompt: system, sep " ", then USER/ASSISTANT turns ended by " "
    and "</s>" in turn; the dataset writes the human turn as "<image>\\n" + question."""
    turns = [("USER", f"<image>\n{question}"), ("ASSISTANT", answer)]
    text = SYSTEM_SENTENCE + " "
    for i, (role, message) in enumerate(turns):
        text += role + ": " + message + (" " if i % 2 == 0 else "</s>")
    return text


def tokenize_with_image(text: str, tokenizer) -> list[int]:
    """The released image-token tokenizer: tokenize the pieces around "<image>", keep the
    first piece's BOS once, strip the first token of every piece, join with the placeholder."""
    pieces = [tokenizer(piece)["input_ids"] for piece in text.split("<image>")]
    offset = 1 if pieces and pieces[0] and pieces[0][0] == tokenizer.bos_token_id else 0
    ids = [pieces[0][0]] if offset else []
    joined = []
    for j, piece in enumerate(pieces):
        if j:
            joined.append([IMAGE_PLACEHOLDER_ID] * (offset + 1))
        joined.append(piece)
    for chunk in joined:
        ids.extend(chunk[offset:])
    return ids


def preprocess(question: str, answer: str, tokenizer, model_max_length: int = 2048):
    """(input_ids, labels) of one conversation before the image is spliced in."""
    conversation = conversation_text(question, answer)
    input_ids = tokenize_with_image(conversation, tokenizer)
    target = list(input_ids)
    total_len = sum(t != tokenizer.pad_token_id for t in input_ids)
    sep = " ASSISTANT: "
    cur_len = 1
    target[:cur_len] = [IGNORE] * cur_len
    for rou in conversation.split("</s>"):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = len(tokenize_with_image(rou, tokenizer))
        instruction_len = len(tokenize_with_image(parts[0], tokenizer)) - 2
        stop = min(cur_len + instruction_len, len(target))
        target[cur_len:stop] = [IGNORE] * (stop - cur_len)
        cur_len += round_len
    target[cur_len:] = [IGNORE] * max(0, len(target) - cur_len)
    if cur_len < model_max_length and cur_len != total_len:
        target = [IGNORE] * len(target)
    return input_ids, target


def splice_and_truncate(input_ids, labels, image_token_id: int, n_image: int, max_length: int):
    """LLaVA's multimodal splice: the placeholder becomes the image's n_image features (here
    n_image copies of the model's image token id, labels ignored), then both are cut to
    max_length."""
    ids, labs = [], []
    for token, label in zip(input_ids, labels, strict=True):
        if token == IMAGE_PLACEHOLDER_ID:
            ids += [image_token_id] * n_image
            labs += [IGNORE] * n_image
        else:
            ids.append(token)
            labs.append(label)
    return ids[:max_length], labs[:max_length]


def released_sequence(record, response: str, tokenizer, image_token_id, n_image, max_length):
    """(ids, labels) the released training builds for ``response`` of ``record``."""
    ids, labels = preprocess(record.question, getattr(record, response), tokenizer, max_length)
    return splice_and_truncate(ids, labels, image_token_id, n_image, max_length)


#: The released reference pass's order: (response, image) of logps 1_w, 1_l, 1_2, 2_w, 2_2.
LOGPS_ORDER = (
    ("chosen", "image"),
    ("rejected", "image"),
    ("contrast", "image"),
    ("chosen", "contrast_image"),
    ("contrast", "contrast_image"),
)


@torch.no_grad()
def released_logps(model, tokenizer, image_processor, record, max_length: int = 2048) -> str:
    """The ``logps`` value the released reference pass writes for ``record``: JSON
    ``{"logps": [5 sums, 5 averages, 5 per-token lists]}``, one sequence at a time; the
    per-token list holds every shifted position's log-prob (ignored ones at token 0)."""
    n_image = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    sums, averages, per_token = [], [], []
    for response, image in LOGPS_ORDER:
        ids, labels = released_sequence(
            record, response, tokenizer, model.config.image_token_id, n_image, max_length
        )
        pixels = image_processor(record.load_image(image), return_tensors="pt")["pixel_values"]
        logits = model(input_ids=torch.tensor([ids]), pixel_values=pixels).logits.float()
        shifted = torch.tensor([labels])[:, 1:].clone()
        mask = shifted != IGNORE
        shifted[~mask] = 0
        token_logps = logits[:, :-1].log_softmax(-1).gather(2, shifted.unsqueeze(2)).squeeze(2)
        total = (token_logps * mask).sum(-1)
        sums.append(total.item())
        averages.append((total / mask.sum(-1)).item())
        per_token.append(token_logps[0].tolist())
    return json.dumps({"logps": sums + averages + per_token})
