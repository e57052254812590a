"""One SymMPO training step of a LLaVA-1.5-7B-shaped model: the released code's way and ours.

    python -m pytest benchmarks/bench_end_to_end.py       # CUDA: 7B shapes, random weights, bf16
    SYMMPO_BENCH_TINY=1 python -m pytest benchmarks/bench_end_to_end.py    # a tiny shape

(`python benchmarks/bench_end_to_end.py [pytest options]` runs the same.) Without CUDA the
tiny shape runs whatever SYMMPO_BENCH_TINY says, and its rows go to the untracked smoke.csv.
The step is timed here (synchronised, median of a few steps), not by pytest-benchmark; the
results table is printed at the end of the run, the rows go to the results CSV.

Model: LLaVA-1.5-7B's configuration (CLIP ViT-L/14 at 336 px, 576 image tokens; Llama 7B,
vocabulary 32064) built from the config with random weights (nothing downloaded), LoRA r = 128
on every linear layer of the language model (float32 adapters, as peft makes them), gradient
checkpointing, AdamW on the adapters; each step as train.py runs it: the forward under bf16
autocast, the backward outside it, peft's float32 copies of the LoRA inputs off.
Batch: B = 4 examples, a 40-token question, responses of about R tokens (R = 75, 150, 300).

- released_way: the released code's step: each of the 5B sequences carries its own image
  through the vision tower, full-sequence logits, the eager loss (float32 log_softmax), and an
  online reference model (a second frozen copy) scored the same way;
- naive: `--forward naive`: 2B images, one pass over 5B sequences, symmpo_loss_from_hidden,
  precomputed reference log-probs;
- shared: `--forward shared`: each (image, question) prefix once, 2P + 5R tokens an example,
  padded rows and a 4-D mask (sdpa);
- shared_varlen: `--forward shared --shared_attention varlen`: the same tokens as one unpadded
  stream, variable-length attention (two flash-attention calls merged by log-sum-exp);
- shared_varlen_liger: the same with `--liger` (Liger's RMSNorm, SwiGLU and RoPE in the
  language model; CUDA only, run last since its patches are process-wide).

Rows: step time (ms, median), sequence tokens per second (5B(P + R) tokens a step for all
providers), peak memory (MiB, weights included) and the memory resident between steps (weights,
adapters, optimizer state), so that a step's own memory is their difference. For op
end_to_end the n_positions column holds R.
"""

from __future__ import annotations

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
    lora_inputs_uncast,
    naive_forward,
    num_image_tokens,
    patch_with_liger,
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
QUESTION_TOKENS = 40 if not TINY else 6
STEPS = 3 if not TINY else 1
IMAGE_TOKEN, BOS, EOS, PAD = 32000, 1, 2, 0


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


def build_model():
    from transformers import LlavaForConditionalGeneration

    vocab = 32064
    dtype = torch.bfloat16 if CUDA else torch.float32
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(DEVICE):
            model = LlavaForConditionalGeneration(llava_config(vocab))
    finally:
        torch.set_default_dtype(previous)
    return model


def make_records(response_length: int, image_size: int, seed: int = 0):
    rng = random.Random(seed)
    words = lambda n: " ".join(str(rng.randint(10, 31999)) for _ in range(n))  # noqa: E731

    def image():
        pixels = bytes(rng.getrandbits(8) for _ in range(3 * image_size**2))
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
        )
        records.append(record)
    return records


def image_processor(size: int):
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:
        from transformers import CLIPImageProcessor as Processor
    return Processor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def released_way_loss(model, ref_model, batch):
    """5B images, full logits, float32 log_softmax, online reference: the released code's step."""
    pixel_values = batch["pixel_values"][batch["image_index"]].to(DEVICE, model.dtype)
    inputs = dict(input_ids=batch["input_ids"].to(DEVICE), pixel_values=pixel_values)
    inputs["attention_mask"] = batch["attention_mask"].to(DEVICE)
    labels = batch["labels"].to(DEVICE)
    with torch.no_grad():
        ref = reference.sequence_logps(ref_model(**inputs).logits, labels)
    policy = reference.sequence_logps(model(**inputs).logits, labels)
    terms = reference.symmpo_terms(policy.view(5, -1), ref.view(5, -1), SymMPOConfig())
    return terms.loss.mean()


_REFERENCE_MODEL = []


def reference_model():
    """The released way's frozen reference copy, built on first use (the same seeded random
    weights as the policy's base), so that it is resident only while released_way runs."""
    if not _REFERENCE_MODEL:
        _REFERENCE_MODEL.append(build_model().eval().requires_grad_(False))
    return _REFERENCE_MODEL[0]


@pytest.fixture(scope="module")
def policy():
    rank = 4 if TINY else 128
    model = add_lora(build_model(), r=rank, alpha=2 * rank, dropout=0.0)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


# Provider is the outer loop (the bottom decorator): naive and shared run before the reference
# copy of released_way exists, so their peak memory holds one model, as in their real use.
# shared_varlen_liger runs last: Liger's patches are process-wide and stay.
@pytest.mark.parametrize("response_length", RESPONSES)
@pytest.mark.parametrize(
    "provider", ["naive", "shared", "shared_varlen", "released_way", "shared_varlen_liger"]
)
def test_end_to_end_step(policy, response_length, provider):
    if provider == "shared_varlen_liger":
        if not CUDA:
            pytest.skip("Liger's kernels need CUDA")
        release_reference_model()
        if not getattr(policy, "symmpo_liger", False):
            patch_with_liger(policy)
            policy.symmpo_liger = True
    if provider.startswith("shared_varlen"):  # back to sdpa afterwards: one policy serves all
        use_varlen_attention(policy.get_base_model())
        try:
            run_step(policy, response_length, provider)
        finally:
            policy.get_base_model().set_attn_implementation({"text_config": "sdpa"})
    else:
        run_step(policy, response_length, provider)


def release_reference_model():
    """Drop released_way's reference copy, so that later providers hold one model."""
    _REFERENCE_MODEL.clear()
    if CUDA:
        torch.cuda.empty_cache()


def run_step(policy, response_length, provider) -> list[dict]:
    """Time the step, write its rows to the results CSV and return them."""
    ref_model = reference_model() if provider == "released_way" else None
    llava_cfg = policy.get_base_model().config
    size = llava_cfg.vision_config.image_size
    n_image_tokens = num_image_tokens(llava_cfg)
    collator = PreferenceCollator(
        IntTokenizer(), image_processor(size), IMAGE_TOKEN, n_image_tokens, max_length=4096
    )
    batch = collator(make_records(response_length, size))
    ref_logps = -torch.rand(5 * BATCH) * response_length * 10
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-6)

    def step():
        # As train.py steps: the forward under bf16 autocast (peft keeps the adapters in float32:
        # without autocast their matmuls would run in float32), the backward outside it, and
        # peft's float32 copies of the LoRA inputs off throughout.
        with lora_inputs_uncast(policy, active=CUDA):
            with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=CUDA):
                if provider == "released_way":
                    loss = released_way_loss(policy, ref_model, batch)
                else:
                    forward = naive_forward if provider == "naive" else shared_forward
                    config = SymMPOConfig()
                    out = compute_loss(policy, batch, ref_logps, "symmpo", config, forward=forward)
                    loss = out.loss
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if CUDA:
            torch.cuda.synchronize()

    step()  # warm-up (allocator, kernels)
    resident = None
    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        # Between steps: weights (both models for released_way), adapters, AdamW state.
        resident = torch.cuda.memory_allocated() / 2**20
    times = []
    for _ in range(STEPS):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    ms = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**20 if CUDA else None
    tokens = batch["n_tokens"]
    env = environment()
    dtype = "bfloat16" if CUDA else "float32"
    hidden = llava_cfg.text_config.hidden_size
    common = ("end_to_end", provider, "train_step", response_length, 32064, hidden, dtype)
    rows = [make_row(*common, "ms", ms, env)]
    rows.append(make_row(*common, "tokens_per_s", tokens / (ms / 1e3), env))
    if peak is not None:
        rows.append(make_row(*common, "peak_mem_mb", peak, env))
        rows.append(make_row(*common, "resident_mem_mb", resident, env))
    write_rows(rows, smoke=TINY)  # the tiny shape is a smoke run, SYMMPO_BENCH_TINY or not
    return rows


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, *sys.argv[1:]]))
