"""What ``python train.py`` prints at the end: the held-out metrics before and after the
preference stage side by side, and one example question with its answers."""

from __future__ import annotations

#: (key, label) of the rows, in order; rows whose key neither evaluation holds are left out.
ROWS = (
    ("hallucination_rate", "greedy answers naming an absent object"),
    ("prior_hallucination_rate", "  of them naming a missing partner (the prior)"),
    ("exact_rate", "greedy answers exactly right"),
    ("logp_accuracy", "preference accuracy, log p(y_w|m) > log p(y_l|m)"),
    ("swap_accuracy", "image-swap accuracy, log p(y_w|m) > log p(y_w|m')"),
)


def before_after(before: dict, after: dict, before_label: str, after_label: str) -> str:
    """A small table of ROWS (before -> after) and the example question's two answers."""
    width = max(len(label) for _, label in ROWS)
    lines = [f"held-out {'':{width - 8}}  {before_label:>16}  {after_label:>16}"]
    for key, label in ROWS:
        if key in before and key in after:
            lines.append(f"{label:{width}}  {before[key]:16.3f}  {after[key]:16.3f}")
    if "example_answer" in before and "example_answer" in after:
        lines.append(f"example: {before.get('example_question', '')}")
        lines.append(f"  {before_label}: {before['example_answer']}")
        lines.append(f"  {after_label}: {after['example_answer']}")
    return "\n".join(lines)
