"""The shared-prefix forward without padding or masks: variable-length attention.

The same computation as the 4-D mask route of ``shared_prefix.py``, arranged for kernels that
take variable-length sequences (flash-attention's). The packed rows' tokens are concatenated
without padding into one stream of N tokens, prefixes first:

    [prefix of row 0, prefix of row 1, ..., responses of row 0, responses of row 1, ...]

(per example S P + sum_k R_k tokens: each prefix once, each response once), so every linear
layer sees exactly those tokens. A response's attention (its prefix, then itself causally)
runs as two attentions over disjoint key sets, merged by their log-sum-exp:

    self:     every segment (a prefix, or a response) causally on itself: one varlen call on
              the whole stream (q = k = v = the stream, no copies); final for prefix tokens
    context:  each row's responses on that row's prefix, all keys visible: one varlen call,
              q = stream[N_p:], k = v = stream[:N_p] (slices, no copies)
    merge:    lse = logaddexp(lse_self, lse_context),
              out = exp(lse_self - lse) out_self + exp(lse_context - lse) out_context

The backward calls each part's flash backward with the merged out and lse (varlen_kernels.py
says why that is exact) and adds the two parts' gradients. Nothing of a prefix is gathered or
repeated per response: saved for backward are q, k, v, out and lse, as for one attention call.
The attention FLOPs are the nonzero part of the mask route's: no padded rows, and no tiles
of other sequences (only the causal diagonal's are partly masked).

Kernels (varlen_kernels.py): PyTorch's flash-attention on CUDA in fp16/bf16 (under autocast
q, k, v go to the autocast dtype first), else the float32 reference (the CPU, tests).

The language model is switched to this attention with ``use_varlen_attention(model)``: calls
that carry no layout (generation, the naive forward) go to sdpa unchanged.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .model import embed_with_images, image_features, unwrap
from .varlen_kernels import VarlenSequences, flash_supported, kernels_for

#: The attention implementation name registered with transformers.
VARLEN_ATTENTION = "symmpo_shared_varlen"


@dataclass
class VarlenLayout:
    """The prefixes-first stream's attention problems (built on the CPU from the segments).

    n_prefix: the number of prefix tokens, stream[:n_prefix]; self_attention: every segment
    of the stream (the prefixes in row order, then the responses) on itself, causal;
    prefix_context: row r's responses (queries in stream[n_prefix:]) on row r's prefix (keys
    in stream[:n_prefix]).
    """

    n_prefix: int
    self_attention: VarlenSequences
    prefix_context: VarlenSequences

    def to(self, device) -> VarlenLayout:
        return VarlenLayout(
            self.n_prefix, self.self_attention.to(device), self.prefix_context.to(device)
        )


def build_varlen_layout(segments: torch.Tensor) -> tuple[VarlenLayout, torch.Tensor]:
    """(layout, stream_position (rows, L)) from the packed rows' segments (rows, L) (0: prefix,
    k > 0: a response, -1: padding; each row a prefix then whole responses, as
    ``PreferenceCollator.shared_layout`` makes them). stream_position maps a packed (row,
    column) to its position in the prefixes-first stream (-1 at padding)."""
    segments = segments.cpu()
    rows, length = segments.shape
    is_prefix, is_response = segments == 0, segments > 0
    prefix_length = is_prefix.sum(1)
    if bool((prefix_length == 0).any()):
        raise ValueError("every packed row needs a prefix (segment 0) before its responses")
    n_prefix, n_response = int(prefix_length.sum()), int(is_response.sum())
    stream_position = torch.full((rows, length), -1, dtype=torch.long)
    stream_position[is_prefix] = torch.arange(n_prefix)
    stream_position[is_response] = n_prefix + torch.arange(n_response)
    # A response is a run of one (row, segment) among the response tokens in row-major order.
    row = torch.arange(rows)[:, None].expand(rows, length)
    width = int(segments.max()) + 1
    run_key = (row * width + segments)[is_response]
    response_length = torch.unique_consecutive(run_key, return_counts=True)[1]
    layout = VarlenLayout(
        n_prefix=n_prefix,
        self_attention=VarlenSequences.from_lengths(
            *[torch.cat([prefix_length, response_length])] * 2
        ),
        prefix_context=VarlenSequences.from_lengths(is_response.sum(1), prefix_length),
    )
    return layout, stream_position


def merge_attention(out, lse, part_out, part_lse) -> None:
    """In place: (out (T, H, D), lse (H, T)) becomes the attention over its keys and the part's
    (same queries, disjoint keys): lse <- logaddexp(lse, part_lse), out <- exp(old lse - lse)
    out + exp(part_lse - lse) part_out, in float32 (float64 for float64)."""
    compute = torch.promote_types(out.dtype, torch.float32)
    merged_lse = torch.logaddexp(lse, part_lse.to(lse.dtype))
    weight = torch.exp(lse - merged_lse).t().unsqueeze(-1).to(compute)
    part_weight = torch.exp(part_lse - merged_lse).t().unsqueeze(-1).to(compute)
    # Two (T, H, D) temporaries in the compute dtype at most (none when out is already in it).
    merged = out.to(compute).mul_(weight)
    merged.add_(part_out.to(compute).mul_(part_weight))
    out.copy_(merged)
    lse.copy_(merged_lse)


def _without_autocast(device_type: str):
    """Autocast off on the device (a no-op context where autocast has no such device: meta)."""
    if device_type not in ("cpu", "cuda", "xpu", "mps"):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


class SharedPrefixAttention(torch.autograd.Function):
    """out (N, H, D) of the prefixes-first stream q (N, H, D), k, v (N, H_kv, D): prefix tokens
    attend causally to their prefix, response tokens to their row's prefix and causally to
    themselves (the module docstring's self + context + merge)."""

    @staticmethod
    def forward(ctx, q, k, v, layout: VarlenLayout, scale: float):
        kernels = kernels_for(q)
        n = layout.n_prefix
        has_responses = q.shape[0] > n
        # q, k, v arrive in the kernels' dtype; autocast must not lower the reference's float32.
        with _without_autocast(q.device.type):
            out, lse, self_state = kernels.forward(q, k, v, layout.self_attention, True, scale)
            context_state = None
            if has_responses:
                context_out, context_lse, context_state = kernels.forward(
                    q[n:], k[:n], v[:n], layout.prefix_context, False, scale
                )
                merge_attention(out[n:], lse[:, n:], context_out, context_lse)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.kernels, ctx.layout, ctx.scale = kernels, layout, scale
        ctx.has_responses = has_responses
        ctx.states = (self_state, context_state)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        kernels, layout, scale = ctx.kernels, ctx.layout, ctx.scale
        self_state, context_state = ctx.states
        n = layout.n_prefix
        dout = dout.contiguous()
        with _without_autocast(q.device.type):
            dq, dk, dv = kernels.backward(
                dout, q, k, v, out, lse, layout.self_attention, True, scale, self_state
            )
            if ctx.has_responses:
                context_dq, context_dk, context_dv = kernels.backward(
                    dout[n:],
                    q[n:],
                    k[:n],
                    v[:n],
                    out[n:],
                    lse[:, n:],
                    layout.prefix_context,
                    False,
                    scale,
                    context_state,
                )
                dq[n:] += context_dq
                dk[:n] += context_dk
                dv[:n] += context_dv
        return dq, dk, dv, None, None


def _kernel_dtype(q, k, v):
    """q, k, v in one dtype: under autocast the autocast dtype (RoPE hands over float32 q, k
    and a 16-bit v when the weights are float32), else q's."""
    device_type = q.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = q.dtype
    return q.to(dtype), k.to(dtype), v.to(dtype)


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
    q, k, v = _kernel_dtype(*(t[0].transpose(0, 1) for t in (query, key, value)))
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    out = SharedPrefixAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), layout, scale)
    return out.unsqueeze(0), None


def varlen_shared_forward(llava, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``shared_prefix.shared_forward`` over the unpadded stream (one row of N tokens) with this
    attention: (hidden (K*B, 1 + R, H), labels (K*B, 1 + R))."""
    packed = batch["shared"]
    device = llava.lm_head.weight.device
    layout, stream_position = build_varlen_layout(packed["segments"])
    # The packed (row, column) of each stream position, in stream order.
    flat_position = stream_position.flatten()
    kept = (flat_position >= 0).nonzero().squeeze(1)
    order = kept[torch.argsort(flat_position[kept])]
    ids = packed["input_ids"].cpu().flatten()[order][None].to(device)
    # Where each sequence's rows sit in the stream, and the labels on the host (as
    # naive_forward's): copied before the model's work is queued.
    rows = packed["gather_rows"].cpu()[:, None]
    columns = stream_position[rows, packed["gather_cols"].cpu()].to(device)
    labels = packed["labels"].cpu()
    # Image tokens sit in the prefixes, which keep their row order: the features' order holds.
    features = image_features(llava, batch["pixel_values"].to(device, llava.dtype))
    embeds = embed_with_images(llava, ids, features)
    # A 4-D placeholder mask: transformers passes it through untouched (no N x N mask is
    # built); the attention reads the layout instead.
    out = llava.model.language_model(
        inputs_embeds=embeds,
        attention_mask=torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device),
        position_ids=packed["position_ids"].cpu().flatten()[order][None].to(device),
        symmpo_shared=layout.to(device),
    )
    return out.last_hidden_state[0, columns], labels


def register_varlen_attention() -> None:
    """Register VARLEN_ATTENTION with transformers (attention function, and sdpa's masks for
    the calls that carry no layout). Idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(VARLEN_ATTENTION, varlen_shared_attention)
    AttentionMaskInterface.register(VARLEN_ATTENTION, sdpa_mask)


def choose_shared_attention(choice: str, llava, device: torch.device, dtype: torch.dtype) -> str:
    """ "mask" or "varlen" for ``--shared_attention choice``: "auto" takes varlen where its
    flash-attention kernels run (CUDA, sm80+, fp16/bf16 compute, a head size they take): there
    it is faster and leaner than the mask route (benchmarks/NOTES.md, run 8); elsewhere the
    varlen route would fall back to its reference kernels, and the mask route (sdpa) is better.
    """
    if choice != "auto":
        return choice
    text = unwrap(llava).config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    probe = torch.empty(1, text.num_attention_heads, head_dim, dtype=dtype, device=device)
    return "varlen" if flash_supported(probe) else "mask"


def use_varlen_attention(llava) -> None:
    """Switch a LLaVA's language model to the varlen shared-prefix attention (the vision tower
    keeps its own)."""
    register_varlen_attention()
    llava.set_attn_implementation({"text_config": VARLEN_ATTENTION})
