"""symmpo.train.forwards: scoring through lm_head's forward (the logits path) gives the fused
hidden-state path's numbers, for the scores and for compute_loss."""

import pytest
import torch

from symmpo import SymMPOConfig
from symmpo.train.forwards import score_batch
from symmpo.train.objectives import compute_loss


@pytest.mark.parametrize("loss", ["symmpo", "dpo"])
def test_logits_path_scores_like_the_hidden_path(tiny, make_collator, make_records, loss):
    batch = make_collator(loss)(make_records(2, seed=13))
    a = score_batch(tiny[1], batch, average=False)
    b = score_batch(tiny[1], batch, average=False, logits_path=True)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    ref = torch.zeros(batch["input_ids"].shape[0])
    x = compute_loss(tiny[1], batch, ref, loss, SymMPOConfig())
    y = compute_loss(tiny[1], batch, ref, loss, SymMPOConfig(), logits_path=True)
    assert x.loss.item() == pytest.approx(y.loss.item(), rel=1e-5)
