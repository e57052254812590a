"""``curves.png`` of a run, from its ``metrics.jsonl`` (training) and ``eval.jsonl`` (held-out)."""

from __future__ import annotations

import pathlib

from .readers import read_jsonl


def plot_curves(output_dir) -> pathlib.Path | None:
    """curves.png: training loss, train and held-out accuracies, hallucination rate by step.

    Returns its path, or None when the folder has neither log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir = pathlib.Path(output_dir)
    train = (
        read_jsonl(output_dir / "metrics.jsonl") if (output_dir / "metrics.jsonl").exists() else []
    )
    train = [row for row in train if "loss" in row]  # the preference stage's (not "sft" rows)
    evals = read_jsonl(output_dir / "eval.jsonl") if (output_dir / "eval.jsonl").exists() else []
    if not train and not evals:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    if train:
        axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
        for key in ("accuracy_dpo", "accuracy_pair1", "accuracy_pair2"):
            if key in train[0]:
                axes[1].plot(
                    [r["step"] for r in train], [r[key] for r in train], label=f"train {key}"
                )
    for key in ("logp_accuracy", "reward_accuracy", "contrast_accuracy_m_prime"):
        points = [(r["step"], r[key]) for r in evals if key in r]
        if points:
            axes[1].plot(*zip(*points, strict=True), "o--", label=f"held-out {key}")
    points = [(r["step"], r["hallucination_rate"]) for r in evals if "hallucination_rate" in r]
    if points:
        axes[2].plot(*zip(*points, strict=True), "o-", color="C3", label="hallucination rate")
    for ax, title in zip(axes, ("loss", "accuracy", "hallucination rate"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out = output_dir / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
