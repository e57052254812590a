"""One SymMPO training step of a LLaVA-1.5-7B-shaped model: the released recipe's way and ours.

    python -m pytest benchmarks/bench_end_to_end.py       # CUDA: 7B shapes, random weights, bf16
    SYMMPO_BENCH_TINY=1 python -m pytest benchmarks/bench_end_to_end.py    # a tiny shape

(`python benchmarks/bench_end_to_end.py [pytest options]` runs the same.) Without CUDA the
tiny shape runs whatever SYMMPO_BENCH_TINY says, and its rows go to the untracked smoke.csv.
The step is timed here (synchronised, median of a few steps), not by pytest-benchmark; the
results table is printed at the end of the run, the rows go to the results CSV.

Model: LLaVA-1.5-7B's configuration (CLIP ViT-L/14 at 336 px, 576 image tokens; Llama 7B,
vocabulary 32064) built from the config with random weights (nothing downloaded). Every step
runs as train.py runs it: the forward under bf16 autocast, the backward outside it, gradient
checkpointing, AdamW. Batch: B = 4 examples, a 40-token question, responses of about R tokens
(R = 75, 150, 300; SYMMPO_E2E_R chooses). The reference log-probs that the providers read are
the batch's own (`ref_logps`, the five sums of each record's `logps`, as the released data has
them).

Two modes (the CSV's mode column):

- train_step: LoRA r = 128 (alpha 256) on every linear layer of the language model, bf16 base
  weights, float32 adapters as peft makes them (peft's float32 copies of their inputs off:
  `lora_inputs_uncast`), AdamW on the adapters (~17 GiB resident); every provider, every R;
- full_finetune: the released main recipe trains all weights: every language-model weight
  (embeddings, 32 layers, final norm, lm_head: 6.74 B parameters) trainable, the vision tower and
  the projector frozen, at the middle R only (R = 150), providers released_recipe and
  shared_varlen. Dtypes as train.py's full fine-tuning: float32 weights computed in bf16 under
  autocast, float32 gradients, AdamW's float32 state, fused (no foreach temporaries: the foreach
  step would allocate a 25 GiB copy of the second moments). That is 16 bytes a trained parameter,
  as under DeepSpeed's bf16 mixed precision (bf16 weights and gradients, float32 master weights
  and Adam state), spread there over several GPUs. On one 139 GiB H200: 76.6 GiB resident
  (weights 26.3, Adam state 50.2), a peak of 105.3 GiB for released_recipe at R = 150 (+ 25.1
  GiB of gradients in the backward, autocast's bf16 weight copies during the forward, the
  activations; docs/performance.md).

Providers (what one step runs):

- released_recipe: the released trainer as it runs: each of the 5B sequences carries its own
  copy of its image through the CLIP tower (5B tower passes) under torch.no_grad, as the
  released clip_encoder runs it (the projector too, here), transformers' forward to full
  (5B, T, V) logits, the eager loss (float32 log_softmax over all positions, gather, masked sum,
  the SymMPO terms in eager PyTorch), the reference log-probs read from the batch (no reference
  model);
- released_online_ref: released_recipe plus a second frozen copy of the model scoring the
  reference the same way every step. Not how the released trainer runs (it reads precomputed
  reference log-probs); kept to show what an online reference costs. LoRA only;
- naive: `--forward naive`: 2B images through the tower, one pass over 5B sequences,
  symmpo_loss_from_hidden;
- shared: `--forward shared --shared_attention mask`: each (image, question) prefix once,
  2P + 5R tokens an example, padded rows and a 4-D mask (sdpa);
- shared_varlen: `--forward shared` as it runs on CUDA (`--shared_attention varlen`): the same
  tokens as one unpadded stream, variable-length attention (two flash-attention calls merged by
  log-sum-exp);
- shared_varlen_liger: the same with `--liger` (Liger's RMSNorm, SwiGLU and RoPE in the
  language model; CUDA only, run last since its patches are process-wide).

Rows, per (mode, provider, R): step time (ms, median), sequence tokens per second (5B(P + R)
tokens a step for all providers), peak memory (peak_mem_mb, weights included), the memory
resident between steps (resident_mem_mb: weights, adapters, optimizer state; the reference copy
for released_online_ref) and the step's own memory (step_mem_mb = peak - resident). CUDA:
the caching allocator's allocated bytes. CPU (Linux): the process's resident set (VmRSS, VmHWM),
so resident there also counts the interpreter and its libraries. For op end_to_end the
n_positions column holds R.

Cases run full_finetune first, then the LoRA providers, each case holding only the models it
needs (the others are dropped before it starts): released_online_ref's reference copy exists
only during its cases, and shared_varlen_liger runs last. Size: on an H100 the 15 LoRA cases
before this split took 2m30 with two model builds; this suite adds 3 LoRA and 2 full fine-tuning
cases and one build, estimated at about 4 minutes of an H200 in all (device_check.sh gives its
e2e step 360 s).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import random
import statistics
import sys
import time

import pytest
import torch
from PIL import Image
from results_csv import environment, make_row, write_rows

from symmpo import SymMPOConfig, reference
from symmpo.train.collator import PreferenceCollator
from symmpo.train.data import PreferenceRecord
from symmpo.train.model import (
    add_lora,
    image_features,
    lora_inputs_uncast,
    naive_forward,
    num_image_tokens,
    patch_with_liger,
    unwrap,
)
from symmpo.train.objectives import compute_loss
from symmpo.train.shared_prefix import shared_forward
from symmpo.train.shared_varlen import use_varlen_attention

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
TINY = os.environ.get("SYMMPO_BENCH_TINY") == "1" or not CUDA
BATCH = 4 if not TINY else 2
RESPONSES = [int(r) for r in os.environ.get("SYMMPO_E2E_R", "75,150,300").split(",")]
if TINY:
    RESPONSES = [12]
#: Full fine-tuning runs at one response length: the middle one (150 by default).
FULL_FINETUNE_R = RESPONSES[len(RESPONSES) // 2]
QUESTION_TOKENS = 40 if not TINY else 6
STEPS = 3 if not TINY else 1
IMAGE_TOKEN, BOS, EOS, PAD = 32000, 1, 2, 0
VOCAB = 32064


class IntTokenizer:
    """Text of space-separated integers -> those ids, other words -> id 5, BOS first as Llama's
    tokenizer adds it; enough for the collator's interface and its template's text."""

    bos_token_id, eos_token_id, pad_token_id = BOS, EOS, PAD
    named = {"<image>": IMAGE_TOKEN, "USER:": 3, "ASSISTANT:": 4, "</s>": EOS}

    def tokenize(self, text):
        return text.replace("</s>", " </s> ").split()

    def __call__(self, text, add_special_tokens=True):
        words = self.tokenize(text)
        ids = [self.named.get(t) or (int(t) if t.isdigit() else 5) for t in words]
        return {"input_ids": [BOS, *ids] if add_special_tokens else ids}


def llava_config(vocab: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    if TINY:
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2)
        vision.update(num_attention_heads=2, image_size=28, patch_size=14)
        text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2)
        text.update(num_attention_heads=4)
    else:  # LLaVA-1.5-7B
        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24)
        vision.update(num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
        text = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32)
        text.update(num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
    return LlavaConfig(
        vision_config=CLIPVisionConfig(**vision),
        text_config=LlamaConfig(vocab_size=vocab, **text),
        image_token_id=IMAGE_TOKEN,
        vision_feature_layer=-2,
    )


def build_model(dtype: torch.dtype | None = None):
    """The LLaVA of llava_config with seeded random weights, on DEVICE, in ``dtype`` (default:
    bf16 on CUDA, float32 on the CPU)."""
    from transformers import LlavaForConditionalGeneration

    dtype = dtype or (torch.bfloat16 if CUDA else torch.float32)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(DEVICE):
            model = LlavaForConditionalGeneration(llava_config(VOCAB))
    finally:
        torch.set_default_dtype(previous)
    return model


def make_records(response_length: int, image_size: int, seed: int = 0):
    """BATCH records of random words and images, with five random reference sums each (the
    released data's `logps`)."""
    rng = random.Random(seed)
    words = lambda n: " ".join(str(rng.randint(10, 31999)) for _ in range(n))  # noqa: E731

    def image():
        pixels = rng.randbytes(3 * image_size**2)
        return Image.frombytes("RGB", (image_size, image_size), pixels)

    records = []
    for i in range(BATCH):
        images = [image(), image()]
        lengths = [max(1, int(response_length * rng.uniform(0.9, 1.1))) for _ in range(3)]
        record = PreferenceRecord(
            idx=i,
            question=words(QUESTION_TOKENS),
            chosen=words(lengths[0]),
            rejected=words(lengths[1]),
            contrast=words(lengths[2]),
            image=images[0],
            contrast_image=images[1],
            ref_logps=[-rng.uniform(1, 10) * response_length for _ in range(5)],
        )
        records.append(record)
    return records


def image_processor(size: int):
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:
        from transformers import CLIPImageProcessor as Processor
    return Processor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


# ---------------------------------------------------------------------------------------------
# The models: each built on first use, only those of the running case resident.

_RESIDENT: dict[str, torch.nn.Module] = {}


def lora_policy():
    """The train_step policy: bf16 weights (float32 on the CPU), peft LoRA r = 128, alpha 256,
    no dropout, on every linear layer of the language model; gradient checkpointing."""
    rank = 4 if TINY else 128
    model = add_lora(build_model(), r=rank, alpha=2 * rank, dropout=0.0)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def full_policy():
    """The full_finetune policy: float32 weights (bf16 compute under autocast), every weight of
    the language model trainable, the vision tower and the projector frozen (their features are
    constants, as under the released tower's torch.no_grad); gradient checkpointing."""
    model = build_model(torch.float32)
    model.model.vision_tower.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def reference_model():
    """released_online_ref's frozen reference: a second copy of the base model (the same seeded
    random weights, bf16 on CUDA), in eval mode."""
    return build_model().eval().requires_grad_(False)


BUILDERS = {"lora": lora_policy, "full": full_policy, "reference": reference_model}


def resident_models(*names: str) -> list[torch.nn.Module]:
    """The models ``names`` (keys of BUILDERS), each built on first use. Every other model is
    dropped first, so a case's resident and peak memory count only its own models."""
    for name in [n for n in _RESIDENT if n not in names]:
        del _RESIDENT[name]
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()
    for name in names:
        if name not in _RESIDENT:
            _RESIDENT[name] = BUILDERS[name]()
    return [_RESIDENT[name] for name in names]


# ---------------------------------------------------------------------------------------------
# The providers' losses: (policy, batch, ref_model) -> the scalar loss of one step.


def released_sequence_logps(model, batch) -> torch.Tensor:
    """(5B,) float32 sequence log-probs as the released trainer computes them: every sequence's
    own copy of its image through the vision tower and the projector under torch.no_grad (the
    released clip_encoder's forward runs without gradient), the features written at the image
    tokens, transformers' forward to the full (5B, T, V) logits, then the eager float32
    log_softmax, gather and masked sum (symmpo.reference.sequence_logps)."""
    llava = unwrap(model)
    ids = batch["input_ids"].to(DEVICE)
    pixel_values = batch["pixel_values"][batch["image_index"]].to(DEVICE, llava.dtype)
    with torch.no_grad():
        features = image_features(llava, pixel_values)  # 5B tower passes, no graph
    embeds = llava.get_input_embeddings()(ids)
    at_images = (ids == llava.config.image_token_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(at_images, features.to(embeds.dtype))
    logits = llava(inputs_embeds=embeds, attention_mask=batch["attention_mask"].to(DEVICE)).logits
    return reference.sequence_logps(logits, batch["labels"].to(DEVICE))


def eager_symmpo_loss(policy_logps, ref_logps) -> torch.Tensor:
    """The SymMPO loss in eager PyTorch from (5B,) kind-major sequence log-probs."""
    ref_logps = ref_logps.to(policy_logps.device, policy_logps.dtype)
    terms = reference.symmpo_terms(policy_logps.view(5, -1), ref_logps.view(5, -1), SymMPOConfig())
    return terms.loss.mean()


def released_recipe_loss(policy, batch, ref_model=None):
    """released_recipe: the released step, the reference log-probs read from the batch."""
    return eager_symmpo_loss(released_sequence_logps(policy, batch), batch["ref_logps"])


def released_online_ref_loss(policy, batch, ref_model):
    """released_online_ref: the released step, the reference scored by ``ref_model`` the same
    way (without gradient) every step."""
    with torch.no_grad():
        ref_logps = released_sequence_logps(ref_model, batch)
    return eager_symmpo_loss(released_sequence_logps(policy, batch), ref_logps)


def trainer_loss(policy, batch, forward) -> torch.Tensor:
    """train.py's loss: ``forward``'s hidden states to symmpo_loss_from_hidden, the reference
    log-probs read from the batch."""
    out = compute_loss(policy, batch, batch["ref_logps"], "symmpo", SymMPOConfig(), forward=forward)
    return out.loss


def naive_loss(policy, batch, ref_model=None):
    """naive: train.py's `--forward naive` (2B images, one pass over the 5B sequences)."""
    return trainer_loss(policy, batch, naive_forward)


def shared_loss(policy, batch, ref_model=None):
    """shared, shared_varlen, shared_varlen_liger: train.py's `--forward shared`; the attention
    route (mask or varlen) and Liger's patches are the policy's, set by the caller."""
    return trainer_loss(policy, batch, shared_forward)


LOSSES = {
    "released_recipe": released_recipe_loss,
    "released_online_ref": released_online_ref_loss,
    "naive": naive_loss,
    "shared": shared_loss,
    "shared_varlen": shared_loss,
    "shared_varlen_liger": shared_loss,
}

# ---------------------------------------------------------------------------------------------
# The cases. full_finetune first; then the LoRA providers with provider as the outer loop;
# released_online_ref's reference copy lives only through its cases; shared_varlen_liger runs
# last (Liger's patches are process-wide and stay).

LORA_PROVIDERS = ["released_recipe", "naive", "shared", "shared_varlen", "released_online_ref"]
LORA_PROVIDERS.append("shared_varlen_liger")
CASES = [("full_finetune", p, FULL_FINETUNE_R) for p in ("released_recipe", "shared_varlen")]
CASES += [("train_step", p, r) for p in LORA_PROVIDERS for r in RESPONSES]


@pytest.mark.parametrize(("mode", "provider", "response_length"), CASES)
def test_end_to_end_step(mode, provider, response_length):
    if provider == "shared_varlen_liger" and not CUDA:
        pytest.skip("Liger's kernels need CUDA")
    if mode == "full_finetune":
        (policy,) = resident_models("full")
        ref_model = None
    elif provider == "released_online_ref":
        policy, ref_model = resident_models("lora", "reference")
    else:
        (policy,) = resident_models("lora")
        ref_model = None
    if provider == "shared_varlen_liger" and not getattr(policy, "symmpo_liger", False):
        patch_with_liger(policy)
        policy.symmpo_liger = True
    if provider.startswith("shared_varlen"):  # back to sdpa afterwards: one policy serves all
        use_varlen_attention(unwrap(policy))
        try:
            run_step(policy, response_length, provider, mode, ref_model)
        finally:
            unwrap(policy).set_attn_implementation({"text_config": "sdpa"})
    else:
        run_step(policy, response_length, provider, mode, ref_model)


# ---------------------------------------------------------------------------------------------
# Memory: CUDA's allocator, or the process's resident set on a Linux CPU.


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_memory_peak() -> float | None:
    """The memory resident now (MiB), what earlier steps freed returned first, with the peak
    counter restarted from it; None where nothing counts memory (a CPU without /proc)."""
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    with contextlib.suppress(OSError, AttributeError):  # glibc: freed heap pages returned
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM restarts from the current VmRSS
        return _status_mib("VmRSS")
    except OSError:
        return None


def memory_peak() -> float:
    """The highest memory (MiB) since reset_memory_peak."""
    if CUDA:
        return torch.cuda.max_memory_allocated() / 2**20
    return _status_mib("VmHWM")


def run_step(policy, response_length, provider, mode="train_step", ref_model=None) -> list[dict]:
    """Time ``provider``'s step on ``policy``, write its rows to the results CSV, return them.
    ``ref_model``: released_online_ref's reference model."""
    if provider == "released_online_ref" and ref_model is None:
        raise ValueError("released_online_ref needs its reference model (ref_model)")
    loss_of = LOSSES[provider]
    llava_cfg = unwrap(policy).config
    size = llava_cfg.vision_config.image_size
    n_image_tokens = num_image_tokens(llava_cfg)
    collator = PreferenceCollator(
        IntTokenizer(), image_processor(size), IMAGE_TOKEN, n_image_tokens, max_length=4096
    )
    batch = collator(make_records(response_length, size))
    trainable = [p for p in policy.parameters() if p.requires_grad]
    # Full fine-tuning: fused AdamW (no foreach copy of the 25 GiB float32 second moments);
    # LoRA: torch's default (foreach on CUDA). fused=False would force the per-tensor loop.
    fused = True if CUDA and mode == "full_finetune" else None
    optimizer = torch.optim.AdamW(trainable, lr=1e-6, fused=fused)

    def step():
        # As train.py steps: the forward under bf16 autocast (peft keeps the adapters in float32:
        # without autocast their matmuls would run in float32), the backward outside it, and
        # peft's float32 copies of the LoRA inputs off throughout.
        with lora_inputs_uncast(policy, active=CUDA):
            with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=CUDA):
                loss = loss_of(policy, batch, ref_model)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if CUDA:
            torch.cuda.synchronize()

    step()  # warm-up (allocator, kernels; AdamW's state)
    resident = reset_memory_peak()  # between steps: weights, adapters, AdamW state
    times = []
    for _ in range(STEPS):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    ms = statistics.median(times)
    peak = memory_peak() if resident is not None else None
    env = environment()
    dtype = "bfloat16" if CUDA else "float32"
    hidden = llava_cfg.text_config.hidden_size
    common = ("end_to_end", provider, mode, response_length, VOCAB, hidden, dtype)
    rows = [make_row(*common, "ms", ms, env)]
    rows.append(make_row(*common, "tokens_per_s", batch["n_tokens"] / (ms / 1e3), env))
    if peak is not None:
        rows.append(make_row(*common, "peak_mem_mb", peak, env))
        rows.append(make_row(*common, "resident_mem_mb", resident, env))
        rows.append(make_row(*common, "step_mem_mb", peak - resident, env))
    write_rows(rows, smoke=TINY)  # the tiny shape is a smoke run, SYMMPO_BENCH_TINY or not
    return rows


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, *sys.argv[1:]]))
