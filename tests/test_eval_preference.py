"""symmpo.eval.preference: the held-out metrics come from the objective's comparisons, with the
names and values the string-compared version reported (checked against it, written out here);
the metrics are defined in docs/math.md#metrics."""

import contextlib
from types import SimpleNamespace

import pytest
import torch

from symmpo.eval import preference
from symmpo.eval.preference import REWARD_METRICS, preference_metrics, reward_metric_names
from symmpo.train.objectives import OBJECTIVES, get_objective

B = 6  # held-out records


class FakeCollator:
    """Batches of record indices; the objective is what preference_metrics reads."""

    def __init__(self, objective):
        self.objective = get_objective(objective)
        self.sequences = self.objective.sequences

    def __call__(self, chunk):
        return {"idx": torch.tensor(chunk)}


def fake_scores(kinds, seed):
    """(policy, reference) (K, B) log-probs and score_batch / reference_logps serving them."""
    gen = torch.Generator().manual_seed(seed)
    policy = -10 * torch.rand(kinds, B, generator=gen)
    reference = -10 * torch.rand(kinds, B, generator=gen)

    def score_batch(model, batch, average, forward, logits_path=False):
        return policy[:, batch["idx"]].reshape(-1)

    return policy, reference, score_batch, lambda batch: reference[:, batch["idx"]].reshape(-1)


def old_metrics(loss, policy, reference, args):
    """The metrics as symmpo/evaluate.py computed them with `args.loss == "symmpo"` tests."""
    s, r = policy, args.beta * (policy - reference)
    if loss == "symmpo" and args.beta_contrast is not None:
        r[3:] *= args.beta_contrast / args.beta
    out = {
        "logp_accuracy": float((s[0] > s[1]).float().mean()),
        "reward_accuracy": float((r[0] > r[1]).float().mean()),
        "reward_margin": float((r[0] - r[1]).mean()),
        "logp_chosen": float(s[0].mean()),
    }
    if loss == "symmpo":
        out.update(
            contrast_accuracy_m=float((s[0] > s[2]).float().mean()),
            contrast_accuracy_m_prime=float((s[4] > s[3]).float().mean()),
            reward_margin_pair1=float((r[0] - r[2]).mean()),
            reward_margin_pair2=float((r[4] - r[3]).mean()),
        )
    return out


@pytest.mark.parametrize("beta_contrast", [None, 0.3])
@pytest.mark.parametrize("loss", sorted(OBJECTIVES))
@pytest.mark.parametrize("eval_batch_size", [1, 4, B])
def test_metrics_match_the_string_compared_version(
    monkeypatch, loss, beta_contrast, eval_batch_size
):
    collator = FakeCollator(loss)
    policy, reference, score, reference_logps = fake_scores(len(collator.sequences), seed=3)
    monkeypatch.setattr(preference, "score_batch", score)
    args = SimpleNamespace(
        beta=0.1,
        beta_contrast=beta_contrast,
        average_log_prob=False,
        eval_batch_size=eval_batch_size,
    )
    got = preference_metrics(
        None, list(range(B)), collator, reference_logps, args, contextlib.nullcontext, None
    )
    expected = old_metrics(loss, policy, reference, args)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


def test_symmpo_names_and_pairs():
    comparisons = get_objective("symmpo").comparisons
    names = {reward_metric_names(acc)[0]: (winner, loser) for acc, winner, loser in comparisons}
    assert names == {
        "reward_margin": (0, 1),
        "reward_margin_pair1": (0, 2),
        "reward_margin_pair2": (4, 3),
    }
    assert [reward_metric_names(acc)[1] for acc, _, _ in comparisons] == [
        "reward_accuracy",
        None,
        None,
    ]
    for objective in OBJECTIVES.values():
        assert {acc for acc, _, _ in objective.comparisons} <= set(REWARD_METRICS)


def test_a_new_comparison_gets_a_derived_margin_name():
    assert reward_metric_names("caption_accuracy") == ("caption_accuracy_reward_margin", None)
