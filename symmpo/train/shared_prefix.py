"""Shared-prefix forward: each (image, question) prefix encoded once, not once per sequence.

The five sequences of an example share one question and two images: (m, x) prefixes sequences
0, 1, 2 and (m', x) prefixes 3 and 4, both P tokens long (image tokens + prompt). A naive pass
processes 5 (P + R) tokens per example; this one processes 2 P + 5 R. The collator packs, per
(image, example), the prefix once followed by the responses that continue it
(``PreferenceCollator.shared_layout``); one language-model pass runs over those 2B rows with a
4-D attention mask in which each response sees the whole prefix and, causally, itself (never
the other responses), and with position ids that continue from P for every response. Each
sequence's hidden states are then gathered at [P - 1, its response]: the prefix's last position
predicts the first answer token and is shared, exactly as in the full sequence.

Gradients flow into the prefix (it is an ordinary part of the graph). No KV cache is involved,
so gradient checkpointing works as for any forward. The mask is additive (0 or the dtype's
minimum), which sdpa and eager attention take; flash-attention cannot take an arbitrary mask,
so this forward refuses a language model loaded with it (the trainer loads the language model
with sdpa and keeps flash-attention for the vision tower when flash-attn is installed).
"""

from __future__ import annotations

import torch

from .model import embed_with_images, image_features, unwrap
from .shared_varlen import VARLEN_ATTENTION, varlen_shared_forward


def shared_attention_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, 1, L, L) additive mask from (N, L) segments (0 prefix, k > 0 a response, -1 pad).

    Query q sees key k when k is not padding, k comes no later than q, and k is in the prefix
    or in q's own segment. A padding query sees the prefix (its output is never used; a row with
    no visible key would give NaN).
    """
    length = segments.shape[1]
    order = torch.arange(length, device=segments.device)
    causal = order[None, :] <= order[:, None]  # (Lq, Lk)
    key_seg, query_seg = segments[:, None, :], segments[:, :, None]
    allowed = causal & (key_seg >= 0) & ((key_seg == 0) | (key_seg == query_seg))
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def shared_forward(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden (K*B, 1 + R, H), labels (K*B, 1 + R)): the hidden states of every sequence at
    [P - 1, its response positions], from one pass over the packed prefixes.

    A language model switched to the varlen attention (``shared_varlen.use_varlen_attention``)
    runs the unpadded stream of shared_varlen.py; sdpa and eager run the 4-D mask.
    """
    llava = unwrap(model)
    attn = getattr(llava.config.text_config, "_attn_implementation", None)
    if attn == VARLEN_ATTENTION:
        return varlen_shared_forward(llava, batch)
    if attn is not None and "flash" in attn:
        raise ValueError(
            "the shared-prefix forward needs a language-model attention that takes a 4-D mask "
            f"(sdpa or eager); the model uses {attn}: load it with attn_implementation="
            '{"text_config": "sdpa", "vision_config": "flash_attention_2"}'
        )
    packed = batch["shared"]
    labels = packed["labels"].cpu()  # on the host, as naive_forward's (copied before the pass)
    device = llava.lm_head.weight.device
    rows = packed["gather_rows"].to(device)[:, None]  # indices moved before the model's work
    cols = packed["gather_cols"].to(device)
    ids = packed["input_ids"].to(device)
    features = image_features(llava, batch["pixel_values"].to(device, llava.dtype))
    embeds = embed_with_images(llava, ids, features)
    mask = shared_attention_mask(packed["segments"].to(device), embeds.dtype)
    out = llava.model.language_model(
        inputs_embeds=embeds, attention_mask=mask, position_ids=packed["position_ids"].to(device)
    )
    return out.last_hidden_state[rows, cols], labels
