"""The shared-prefix forward is exact: same log-probs, loss and gradients as the naive one."""

import copy
import importlib.util

import pytest
import torch
from train_script import load_train_script

from symmpo import SymMPOConfig
from symmpo.train import shared_varlen
from symmpo.train.collator import PreferenceCollator
from symmpo.train.data import records_from_rows
from symmpo.train.forwards import score_batch
from symmpo.train.model import naive_forward, num_image_tokens, tiny_llava
from symmpo.train.objectives import compute_loss
from symmpo.train.shared_prefix import shared_attention_mask, shared_forward
from symmpo.train.shared_varlen import use_varlen_attention
from symmpo.train.synthetic import make_synthetic_records
from symmpo.train.tokenizer import build_tokenizer
from symmpo.train.varlen_kernels import REFERENCE, AttentionKernels


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer()
    model, processor = tiny_llava(tokenizer, seed=3)
    return tokenizer, model.float(), processor


def routed(model, attention: str):
    """The model itself for the 4-D mask route, a copy on the varlen attention otherwise."""
    if attention == "mask":
        return model
    varlen = copy.deepcopy(model)
    use_varlen_attention(varlen)
    return varlen


def collate(tiny, loss="symmpo", n=3, seed=11):
    tokenizer, model, processor = tiny
    collator = PreferenceCollator(
        tokenizer,
        processor,
        model.config.image_token_id,
        num_image_tokens(model.config),
        objective=loss,
    )
    return collator(records_from_rows(make_synthetic_records(n, seed=seed))[0])


@pytest.mark.parametrize("attention", ["mask", "varlen"])
@pytest.mark.parametrize("loss", ["symmpo", "dpo", "mdpo"])
def test_per_sequence_logps_match_on_random_inputs(tiny, loss, attention, monkeypatch):
    model = copy.deepcopy(tiny[1])
    torch.manual_seed(0)
    with torch.no_grad():  # random weights, scaled up so the comparison is not trivially flat
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = collate(tiny, loss, n=4, seed=21)
    naive = score_batch(model, batch, average=False, forward=naive_forward)
    calls = []
    counting = AttentionKernels(
        "counting", lambda *a: calls.append(a) or REFERENCE.forward(*a), REFERENCE.backward
    )
    monkeypatch.setattr(shared_varlen, "kernels_for", lambda q: counting)
    shared = score_batch(routed(model, attention), batch, average=False, forward=shared_forward)
    layers = model.config.text_config.num_hidden_layers
    assert len(calls) == (2 * layers if attention == "varlen" else 0)  # self, prefix context
    torch.testing.assert_close(shared, naive, rtol=1e-5, atol=1e-4)
    assert batch["shared"]["n_tokens"] < batch["n_tokens"]


@pytest.mark.parametrize("attention", ["mask", "varlen"])
def test_loss_and_gradients_match(tiny, attention):
    batch = collate(tiny)
    ref = -torch.rand(15) * 30
    results = {}
    for name, forward in (("naive", naive_forward), ("shared", shared_forward)):
        model = copy.deepcopy(tiny[1])
        if name == "shared":
            model = routed(model, attention)
        out = compute_loss(model, batch, ref, "symmpo", SymMPOConfig(), forward=forward)
        out.loss.backward()
        grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
        results[name] = (out.loss.item(), grads)
    assert results["shared"][0] == pytest.approx(results["naive"][0], rel=1e-5)
    for a, b in zip(results["shared"][1], results["naive"][1], strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_mask_each_response_sees_prefix_and_itself_only():
    segments = torch.tensor([[0, 0, 1, 1, 2, -1]])
    visible = shared_attention_mask(segments, torch.float32)[0, 0] == 0
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 0, 0, 1, 0],
            [1, 1, 0, 0, 0, 0],  # padding: sees the prefix; its output is never used
        ],
        dtype=torch.bool,
    )
    assert torch.equal(visible, expected)


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--gradient_checkpointing"],
        ["--gradient_checkpointing", "--shared_attention", "varlen"],
        ["--ref", "model", "--shared_attention", "varlen"],
    ],
)
def test_one_train_step_naive_vs_shared(tmp_path, extra):
    """The issue's acceptance check: same seed, one step, loss within 1e-4, grad norm 1e-3."""
    train = load_train_script()
    common = [
        "--n_train",
        "16",
        "--heldout",
        "4",
        "--batch_size",
        "4",
        "--max_steps",
        "1",
        "--eval_batch_size",
        "8",
        *extra,
    ]
    naive_args = [a for a in common if a not in ("--shared_attention", "varlen")]
    runs = {
        f: train.main(
            [
                *(naive_args if f == "naive" else common),
                "--forward",
                f,
                "--output_dir",
                str(tmp_path / f),
            ]
        )
        for f in ("naive", "shared")
    }
    naive, shared = runs["naive"]["history"][0], runs["shared"]["history"][0]
    assert abs(shared["loss"] - naive["loss"]) <= 1e-4 * abs(naive["loss"])
    assert abs(shared["grad_norm"] - naive["grad_norm"]) <= 1e-3 * naive["grad_norm"]


def test_flash_attn_installed_keeps_sdpa_for_the_shared_language_model(monkeypatch):
    """With flash-attn on CUDA, --forward shared loads the language model with sdpa (its 4-D
    mask) and the vision tower with flash-attention; other runs use flash-attention."""

    from symmpo.train import model as model_module

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        model_module.importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "flash_attn" else real_find_spec(name, *a),
    )
    assert model_module.attention_implementation(cuda) == "flash_attention_2"
    assert model_module.attention_implementation(cuda, shared_prefix=True) == {
        "text_config": "sdpa",
        "vision_config": "flash_attention_2",
    }
    assert model_module.attention_implementation(cpu, shared_prefix=True) == "sdpa"


def test_shared_attention_needs_the_shared_forward(tmp_path):
    train = load_train_script()
    with pytest.raises(ValueError, match="--shared_attention varlen: chooses how --forward shared"):
        train.main(["--shared_attention", "varlen", "--output_dir", str(tmp_path)])
