"""The shared-prefix forward without padding or masks: variable-length attention.

The same computation as the 4-D mask route of ``shared_prefix.py``, arranged for kernels that
take variable-length sequences (flash-attention's). The packed rows' tokens are concatenated
without padding into one stream of N tokens (per example S P + sum_k R_k: each prefix once, each
response once), so every linear layer sees exactly those tokens. Attention runs twice a layer:

    prefixes:   each prefix attends causally to itself         q = k = the prefix (P tokens)
    responses:  each response attends to its own prefix's keys and values, gathered per response
                (not recomputed), and causally to itself:   q = the response (R tokens),
                k = [prefix; response] (P + R), causal aligned bottom-right (query j sees keys
                0 .. P + j), flash-attention's convention when q is shorter than k.

The two outputs are put back in the stream's order. The gathered keys and values cost
2 (P + R) H_kv D elements a response and layer; the attention FLOPs are the nonzero part of the
mask route's, with no padded rows and no masked tiles.

Kernels: ``flash_attn.flash_attn_varlen_func`` when flash-attn is installed, else PyTorch's
``torch.nn.attention.varlen.varlen_attn`` on CUDA, else (the CPU, tests) a loop of sdpa calls,
one a sequence, with the same bottom-right causal mask.

The language model is switched to this attention with ``use_varlen_attention(model)``: calls
that carry no layout (generation, the naive forward) go to sdpa unchanged.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .model import embed_with_images, image_features

#: The attention implementation name registered with transformers.
VARLEN_ATTENTION = "symmpo_shared_varlen"


@dataclass
class VarlenLayout:
    """Index tensors of the unpadded stream (built on the CPU from the packed segments).

    prefix_index (N_p,), response_index (N_r,): stream positions of prefix and response
    tokens; kv_index: for each response, its prefix's positions then its own; inverse (N,):
    puts [prefix outputs; response outputs] back in stream order. cu_* are int32 cumulative
    lengths (n + 1,) with their maxima; *_list hold the same on the host.
    """

    prefix_index: torch.Tensor
    response_index: torch.Tensor
    kv_index: torch.Tensor
    inverse: torch.Tensor
    cu_prefix: torch.Tensor
    cu_query: torch.Tensor
    cu_key: torch.Tensor
    max_prefix: int
    max_query: int
    max_key: int
    cu_prefix_list: list
    cu_query_list: list
    cu_key_list: list

    def to(self, device) -> VarlenLayout:
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=True)
            if isinstance(getattr(self, f.name), torch.Tensor)
            else getattr(self, f.name)
            for f in fields(self)
        }
        return VarlenLayout(**moved)


def _cumulative(lengths: torch.Tensor) -> torch.Tensor:
    return torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(torch.int32)


def build_varlen_layout(segments: torch.Tensor) -> tuple[VarlenLayout, torch.Tensor]:
    """(layout, stream_position (rows, L)) from the packed rows' segments (rows, L) (0: prefix,
    k > 0: a response, -1: padding; each row a prefix then whole responses, as
    ``PreferenceCollator.shared_layout`` makes them). stream_position maps a packed (row,
    column) to its stream position (-1 at padding)."""
    segments = segments.cpu()
    rows, length = segments.shape
    keep = segments >= 0
    stream_position = torch.full((rows, length), -1, dtype=torch.long)
    stream_position[keep] = torch.arange(int(keep.sum()))
    stream_segment = segments[keep]
    stream_row = torch.arange(rows)[:, None].expand(rows, length)[keep]

    prefix_length = (segments == 0).sum(1)
    prefix_index = (stream_segment == 0).nonzero().squeeze(1)
    response_index = (stream_segment > 0).nonzero().squeeze(1)
    # A response is a run of one (row, segment) in stream order.
    run_key = (
        stream_row[response_index] * (int(segments.max()) + 1) + stream_segment[response_index]
    )
    keys, response_length = torch.unique_consecutive(run_key, return_counts=True)
    response_row = keys // (int(segments.max()) + 1)
    prefixes = torch.split(prefix_index, prefix_length.tolist())
    responses = torch.split(response_index, response_length.tolist())
    pairs = zip(response_row.tolist(), responses, strict=True)
    kv_index = torch.cat([part for row, own in pairs for part in (prefixes[row], own)])
    key_length = prefix_length[response_row] + response_length
    cu_prefix, cu_query, cu_key = (
        _cumulative(prefix_length), _cumulative(response_length), _cumulative(key_length)
    )  # fmt: skip
    layout = VarlenLayout(
        prefix_index=prefix_index,
        response_index=response_index,
        kv_index=kv_index,
        inverse=torch.argsort(torch.cat([prefix_index, response_index])),
        cu_prefix=cu_prefix,
        cu_query=cu_query,
        cu_key=cu_key,
        max_prefix=int(prefix_length.max()),
        max_query=int(response_length.max()),
        max_key=int(key_length.max()),
        cu_prefix_list=cu_prefix.tolist(),
        cu_query_list=cu_query.tolist(),
        cu_key_list=cu_key.tolist(),
    )
    return layout, stream_position


# --------------------------------------------------------------------------------------------
# Variable-length causal attention kernels: (T_q, H, D) queries, (T_k, H_kv, D) keys/values
# --------------------------------------------------------------------------------------------


def sdpa_varlen(q, k, v, cu_q, cu_k, scale):
    """Reference: one sdpa call a sequence, causal aligned bottom-right (any device)."""
    outputs = []
    for i in range(len(cu_q) - 1):
        qi = q[cu_q[i] : cu_q[i + 1]].transpose(0, 1)
        ki = k[cu_k[i] : cu_k[i + 1]].transpose(0, 1)
        vi = v[cu_k[i] : cu_k[i + 1]].transpose(0, 1)
        if ki.shape[0] != qi.shape[0]:  # grouped-query attention
            ki = ki.repeat_interleave(qi.shape[0] // ki.shape[0], dim=0)
            vi = vi.repeat_interleave(qi.shape[0] // vi.shape[0], dim=0)
        n_q, n_k = qi.shape[1], ki.shape[1]
        mask = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril(n_k - n_q)
        out = F.scaled_dot_product_attention(qi, ki, vi, mask, scale=scale)
        outputs.append(out.transpose(0, 1))
    return torch.cat(outputs)


@functools.cache
def varlen_kernel(device_type: str) -> str:
    """ "flash_attn", "torch" or "sdpa": which kernel the varlen attention uses on a device.

    flash-attn counts only from 2.1, which aligned the causal mask bottom-right for queries
    shorter than keys (top-left before)."""
    if device_type == "cuda":
        if importlib.util.find_spec("flash_attn") is not None:
            from importlib.metadata import version

            major, minor = (int(x) for x in version("flash_attn").split(".")[:2])
            if (major, minor) >= (2, 1):
                return "flash_attn"
        if importlib.util.find_spec("torch.nn.attention.varlen") is not None:
            return "torch"
    return "sdpa"


@functools.cache
def _torch_varlen_parameters() -> frozenset:
    from torch.nn.attention.varlen import varlen_attn

    return frozenset(inspect.signature(varlen_attn).parameters)


def varlen_causal_attention(q, k, v, cu_q, cu_k, cu_q_list, cu_k_list, max_q, max_k, scale):
    """Causal attention of each query sequence on its key sequence, aligned bottom-right."""
    kernel = varlen_kernel(q.device.type)
    if kernel != "sdpa":
        # flash-attention's kernels take 16-bit inputs only. Under autocast with float32 weights
        # RoPE hands over float32 q, k and a 16-bit v: run in the autocast dtype, as the
        # attention would under autocast; float32 without autocast takes the sdpa loop.
        device_type = q.device.type
        autocast = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if autocast else q.dtype
        if dtype in (torch.float16, torch.bfloat16):
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        else:
            kernel = "sdpa"
    if kernel == "flash_attn":
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func(
            q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale, causal=True
        )
    if kernel == "torch":
        from torch.nn.attention.varlen import varlen_attn

        # Its signature changed across torch releases: causal as window_size=(-1, 0) (newer)
        # or is_causal=True; scale and enable_gqa only in newer ones.
        parameters = _torch_varlen_parameters()
        options = {"window_size": (-1, 0)} if "window_size" in parameters else {"is_causal": True}
        if "scale" in parameters:
            options["scale"] = scale
        elif scale is not None and abs(scale - q.shape[-1] ** -0.5) > 1e-12:
            return sdpa_varlen(q, k, v, cu_q_list, cu_k_list, scale)
        if k.shape[1] != q.shape[1]:  # grouped-query attention
            if "enable_gqa" in parameters:
                options["enable_gqa"] = True
            else:
                k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
                v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **options)
    return sdpa_varlen(q, k, v, cu_q_list, cu_k_list, scale)


def varlen_shared_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs
):
    """transformers attention function: the shared-prefix attention when the call carries a
    ``symmpo_shared`` VarlenLayout (query (1, H, N, D), keys/values (1, H_kv, N, D)), else sdpa.
    Returns ((1, N, H, D), None)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    layout = kwargs.pop("symmpo_shared", None)
    if layout is None:
        return ALL_ATTENTION_FUNCTIONS["sdpa"](
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    if dropout:
        raise ValueError("the varlen shared-prefix attention has no attention dropout")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (N, H, D)
    prefix, keys = layout.prefix_index, layout.kv_index
    prefix_out = varlen_causal_attention(
        q[prefix], k[prefix], v[prefix], layout.cu_prefix, layout.cu_prefix,
        layout.cu_prefix_list, layout.cu_prefix_list, layout.max_prefix, layout.max_prefix,
        scaling,
    )  # fmt: skip
    response_out = varlen_causal_attention(
        q[layout.response_index], k[keys], v[keys], layout.cu_query, layout.cu_key,
        layout.cu_query_list, layout.cu_key_list, layout.max_query, layout.max_key, scaling,
    )  # fmt: skip
    out = torch.cat([prefix_out, response_out])[layout.inverse]
    return out.unsqueeze(0), None


def varlen_shared_forward(llava, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``shared_prefix.shared_forward`` over the unpadded stream (one row of N tokens) with this
    attention: (hidden (K*B, 1 + R, H), labels (K*B, 1 + R))."""
    packed = batch["shared"]
    device = llava.lm_head.weight.device
    layout, stream_position = build_varlen_layout(packed["segments"])
    keep = stream_position >= 0
    ids = packed["input_ids"].cpu()[keep][None].to(device)
    features = image_features(llava, batch["pixel_values"].to(device, llava.dtype))
    embeds = embed_with_images(llava, ids, features)
    # A 4-D placeholder mask: transformers passes it through untouched (no N x N mask is
    # built); the attention reads the layout instead.
    out = llava.model.language_model(
        inputs_embeds=embeds,
        attention_mask=torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device),
        position_ids=packed["position_ids"].cpu()[keep][None].to(device),
        symmpo_shared=layout.to(device),
    )
    rows = packed["gather_rows"].cpu()[:, None]
    columns = stream_position[rows, packed["gather_cols"].cpu()].to(device)
    return out.last_hidden_state[0, columns], packed["labels"].to(device)


def register_varlen_attention() -> None:
    """Register VARLEN_ATTENTION with transformers (attention function, and sdpa's masks for
    the calls that carry no layout). Idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(VARLEN_ATTENTION, varlen_shared_attention)
    AttentionMaskInterface.register(VARLEN_ATTENTION, sdpa_mask)


def use_varlen_attention(llava) -> None:
    """Switch a LLaVA's language model to the varlen shared-prefix attention (the vision tower
    keeps its own)."""
    register_varlen_attention()
    llava.set_attn_implementation({"text_config": VARLEN_ATTENTION})
