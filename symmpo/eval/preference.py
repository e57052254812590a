"""Held-out preference metrics, and ``evaluate_run``: the trainer's periodic evaluation.

For each of the objective's comparisons (``Objective.comparisons``: accuracy name, winner
sequence kind, loser sequence kind; kinds as in ``Objective.sequences``):

- the accuracy: the fraction of examples where the policy gives the winner the higher
  log-prob, e.g. ``logp_accuracy``: log p(y_w|m) > log p(y_l|m); for SymMPO also
  ``contrast_accuracy_m``: y_w over y_w' on m, and ``contrast_accuracy_m_prime``: y_w' over y_w
  on m';
- the mean reward margin beta_w r_w - beta_l r_l, r = log p_policy - log p_reference and beta
  the objective's per-sequence scale (``Objective.reward_scales``: beta_contrast on m' for
  SymMPO when set), named by ``REWARD_METRICS``;
- for the pair (y_w, y_l) on m, also the reward accuracy: the fraction with beta (r_w - r_l) > 0;
- ``logp_chosen``: the mean log p(y_w|m) (per token under average_log_prob), whose collapse is
  DPO's known failure.

On records of the embedded synthetic set, ``evaluate_run`` adds the hallucination rate of
greedy answers (``symmpo.eval.hallucination.scene_hallucinations``).
"""

from __future__ import annotations

import torch

from ..train.forwards import score_batch
from ..train.sft import swap_accuracy
from ..train.synthetic import exact_rate, hallucination_rate, prior_hallucination_rate
from .generation import generate_answers
from .hallucination import parse_groups

#: Per comparison (by its accuracy's name): the name of its mean reward margin and of its reward
#: accuracy (None: not reported). A comparison missing here gets "<name>_reward_margin".
REWARD_METRICS = {
    "logp_accuracy": ("reward_margin", "reward_accuracy"),
    "contrast_accuracy_m": ("reward_margin_pair1", None),
    "contrast_accuracy_m_prime": ("reward_margin_pair2", None),
}


def reward_metric_names(accuracy: str) -> tuple[str, str | None]:
    """(reward margin name, reward accuracy name or None) of a comparison."""
    return REWARD_METRICS.get(accuracy, (f"{accuracy}_reward_margin", None))


@torch.no_grad()
def preference_metrics(model, records, collator, reference_logps, args, autocast, forward) -> dict:
    """Held-out accuracies and mean reward margins of ``collator.objective``'s comparisons (see
    the module docstring), averaged over ``records``.

    ``reference_logps``: batch -> (K*B,) reference log-probs; ``args``: beta, beta_contrast,
    average_log_prob, eval_batch_size and optionally logits_path; ``autocast``: a context
    factory around the policy's scoring; ``forward``: a ``symmpo.train.forwards`` route."""
    objective = collator.objective
    scales = objective.reward_scales(args)  # (K, 1)
    sums: dict[str, float] = {}
    for accuracy, _, _ in objective.comparisons:
        margin, reward_accuracy = reward_metric_names(accuracy)
        for name in (accuracy, reward_accuracy, margin):
            if name is not None:
                sums[name] = 0.0
    sums["logp_chosen"] = 0.0  # mean log p(y_w|m): DPO's known failure drives it down
    logits_path = getattr(args, "logits_path", False)
    count = 0
    for start in range(0, len(records), args.eval_batch_size):
        chunk = records[start : start + args.eval_batch_size]
        batch = collator(chunk)
        with autocast():
            logps = score_batch(model, batch, args.average_log_prob, forward, logits_path).cpu()
        ref = reference_logps(batch).cpu().float()
        s = logps.view(objective.num_sequences, -1)  # kind-major: s[k] is kind k of each example
        r = scales * (logps - ref).view(objective.num_sequences, -1)  # beta_k r_k
        for accuracy, winner, loser in objective.comparisons:
            margin, reward_accuracy = reward_metric_names(accuracy)
            sums[accuracy] += float((s[winner] > s[loser]).sum())
            sums[margin] += float((r[winner] - r[loser]).sum())
            if reward_accuracy is not None:
                sums[reward_accuracy] += float((r[winner] > r[loser]).sum())
        sums["logp_chosen"] += float(s[0].sum())
        count += len(chunk)
    return {k: v / max(count, 1) for k, v in sums.items()}


def evaluate_run(model, records, collator, reference_logps, args, device, use_bf16, forward):
    """Preference metrics on ``records``, plus, for records of the embedded set, greedy answers
    to the first ``args.eval_generate`` questions: ``hallucination_rate`` (the fraction of
    answers naming a (colour, shape) absent from the scene; ``prior_hallucination_rate``: those
    naming a present object's missing partner), ``exact_rate`` (answers equal to
    the correct description), ``described_rate`` (the fraction naming any group at all) and
    the first question and answer; and ``swap_accuracy`` (log p(y_w|m) > log p(y_w|m')).

    The model is put in eval mode and back; bf16 autocast on ``device`` when ``use_bf16``."""
    was_training = model.training
    model.eval()

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    result = preference_metrics(model, records, collator, reference_logps, args, autocast, forward)
    scenes = [r for r in records if "scene_1" in r.extra][: getattr(args, "eval_generate", 0)]
    if scenes:
        with autocast():
            answers = generate_answers(
                model, collator, [r.question for r in scenes], [r.load_image() for r in scenes]
            )
        truths = [r.extra["scene_1"] for r in scenes]
        described = [bool(parse_groups(a)) for a in answers]
        result["hallucination_rate"] = hallucination_rate(answers, truths)
        result["prior_hallucination_rate"] = prior_hallucination_rate(answers, truths)
        result["exact_rate"] = exact_rate(answers, truths)
        result["described_rate"] = sum(described) / len(described)
        result["example_question"] = scenes[0].question
        result["example_answer"] = answers[0][:120]
    if any(r.contrast_image is not None for r in records):
        result["swap_accuracy"] = swap_accuracy(model, collator, records, args.eval_batch_size)
    if was_training:
        model.train()
    return result
