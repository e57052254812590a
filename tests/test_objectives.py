"""symmpo.train.objectives: compute_loss equals symmpo_loss on the model's logits, trains, and
runs the baselines through the collator (docs/math.md#the-loss, #baselines)."""

import copy

import pytest
import torch

from symmpo import SymMPOConfig, symmpo_loss
from symmpo.train.objectives import compute_loss


def test_trainer_loss_equals_symmpo_loss_on_plain_forward_logits(tiny, make_collator, make_records):
    model = copy.deepcopy(tiny[1]).float().eval()
    batch = make_collator()(make_records(2))
    ref = -torch.rand(10) * 50
    config = SymMPOConfig(beta=0.3, pair_weight=0.7)
    ours = compute_loss(model, batch, ref, "symmpo", config)
    logits = model(
        input_ids=batch["input_ids"],
        pixel_values=batch["pixel_values"][batch["image_index"]],
        attention_mask=batch["attention_mask"],
    ).logits
    plain = symmpo_loss(logits, batch["labels"], ref, config=config)
    assert ours.loss.item() == pytest.approx(plain.loss.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(ours.policy_logps, plain.policy_logps, rtol=1e-5, atol=1e-4)


def test_fixed_batch_overfits(make_tiny, make_collator, make_records):
    tokenizer, model, processor = make_tiny(seed=1)
    collator = make_collator(tiny=(tokenizer, model, processor))
    batch = collator(make_records(4, seed=3))
    ref = torch.zeros(20)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(25):
        out = compute_loss(model, batch, ref, "symmpo", SymMPOConfig())
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("loss", ["dpo", "mdpo"])
def test_baseline_losses_through_the_collator(tiny, make_collator, make_records, loss):
    batch = make_collator(loss)(make_records(2))
    kinds = {"dpo": 2, "mdpo": 3}[loss]
    assert (
        batch["input_ids"].shape[0] == 2 * kinds
        and batch["pixel_values"].shape[0] == 4 - (loss == "dpo") * 2
    )
    model = copy.deepcopy(tiny[1])  # the backward below writes .grad
    out = compute_loss(model, batch, torch.zeros(2 * kinds), loss, SymMPOConfig())
    out.loss.backward()
    assert torch.isfinite(out.loss)
