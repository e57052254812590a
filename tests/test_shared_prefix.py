"""The shared-prefix forward is exact: same log-probs, loss and gradients as the naive one."""

import copy

import pytest
import torch
from train_script import load_train_script

from symmpo import SymMPOConfig
from symmpo.train import shared_varlen
from symmpo.train.forwards import score_batch
from symmpo.train.model import naive_forward
from symmpo.train.objectives import compute_loss
from symmpo.train.shared_prefix import shared_attention_mask, shared_forward
from symmpo.train.shared_varlen import use_varlen_attention
from symmpo.train.varlen_kernels import REFERENCE, AttentionKernels


@pytest.fixture(scope="module")
def tiny3(make_tiny):
    """The tiny LLaVA of seed 3, in float32."""
    tokenizer, model, processor = make_tiny(seed=3)
    return tokenizer, model.float(), processor


def routed(model, attention: str):
    """The model itself for the 4-D mask route, a copy on the varlen attention otherwise."""
    if attention == "mask":
        return model
    varlen = copy.deepcopy(model)
    use_varlen_attention(varlen)
    return varlen


@pytest.fixture
def collate(tiny3, make_collator, make_records):
    """collate(loss="symmpo", n=3, seed=11) -> a batch of n synthetic examples for tiny3."""

    def run(loss="symmpo", n=3, seed=11):
        return make_collator(loss, tiny=tiny3)(make_records(n, seed=seed))

    return run


@pytest.mark.parametrize("attention", ["mask", "varlen"])
@pytest.mark.parametrize("loss", ["symmpo", "dpo", "mdpo"])
def test_per_sequence_logps_match_on_random_inputs(tiny3, collate, loss, attention, monkeypatch):
    model = copy.deepcopy(tiny3[1])
    torch.manual_seed(0)
    with torch.no_grad():  # random weights, scaled up so the comparison is not trivially flat
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = collate(loss, n=4, seed=21)
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
def test_loss_and_gradients_match(tiny3, collate, attention):
    batch = collate()
    ref = -torch.rand(15) * 30
    results = {}
    for name, forward in (("naive", naive_forward), ("shared", shared_forward)):
        model = copy.deepcopy(tiny3[1])
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


def test_shared_attention_needs_the_shared_forward(tmp_path):
    train = load_train_script()
    with pytest.raises(ValueError, match="--shared_attention varlen: chooses how --forward shared"):
        train.main(["--shared_attention", "varlen", "--output_dir", str(tmp_path)])
