"""Plot step time, peak memory and step memory against response length for the end-to-end bench.

    python benchmarks/plot_end_to_end.py [--device "NVIDIA H200"] [--csv FILE] [--out FILE]

Reads benchmarks/results/results.csv (rows of bench_end_to_end.py) and draws, for one device,
three panels: one line per LoRA provider (mode train_step: released_recipe,
released_online_ref, naive, shared, shared_varlen, shared_varlen_liger; released_way for rows
written before it was split in two, drawn only for a device without released_recipe rows)
and a square per full fine-tuning case (mode full_finetune), in its provider's colour. Step
memory is the step_mem_mb rows, or peak minus resident for rows written before that metric.
"""

from __future__ import annotations

import argparse
import collections
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from results_csv import DEFAULT_PATH, read_rows  # noqa: E402

LABELS = {  # provider (the CSV's name): what a step does
    "released_recipe": "released_recipe: the released trainer (5B images without grad, full "
    "logits, eager loss, precomputed ref.)",
    "released_online_ref": "released_online_ref: the same + a frozen second model scoring the "
    "ref. each step",
    "naive": "naive: --forward naive + symmpo_loss_from_hidden",
    "shared": "shared: --forward shared --shared_attention mask",
    "shared_varlen": "shared_varlen: --forward shared (varlen route, its default on CUDA)",
    "shared_varlen_liger": "shared_varlen_liger: the same with --liger",
    "released_way": "released_way (earlier rows: online ref., the tower's backward)",
}
#: mode -> marker and line style (LoRA lines, full fine-tuning squares)
MODES = {"train_step": "o-", "full_finetune": "s--"}
PANELS = (  # metric, title, scale
    ("ms", "step time (ms)", 1),
    ("peak_mem_mb", "peak memory (GiB)", 1 / 1024),
    ("step_mem_mb", "step memory: peak - resident (GiB)", 1 / 1024),
)


def main(argv=None) -> pathlib.Path:
    parser = argparse.ArgumentParser()
    parser.add_argument("--csv", default=str(DEFAULT_PATH))
    parser.add_argument("--device", default=None, help="default: the first CUDA device listed")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    rows = [r for r in read_rows(pathlib.Path(args.csv)) if r["op"] == "end_to_end"]
    devices = sorted({r["device"] for r in rows}, key=lambda d: d.startswith("cpu"))
    if not devices:
        raise SystemExit("no end_to_end rows in the CSV")
    device = args.device or devices[0]
    series = collections.defaultdict(dict)  # (mode, provider, metric) -> {R: value}
    for r in rows:
        if r["device"] == device:
            key = (r["mode"], r["provider"], r["metric"])
            series[key][int(r["n_positions"])] = float(r["value"])
    if any(provider == "released_recipe" for _, provider, _ in series):
        # The earlier baseline is not comparable with the released recipe's rows: drop it.
        series = {key: points for key, points in series.items() if key[1] != "released_way"}
    for (mode, provider, metric), points in list(series.items()):
        if metric == "peak_mem_mb" and (mode, provider, "step_mem_mb") not in series:
            resident = series.get((mode, provider, "resident_mem_mb"), {})
            steps = {n: peak - resident[n] for n, peak in points.items() if n in resident}
            series[(mode, provider, "step_mem_mb")] = steps
    fig, axes = plt.subplots(1, len(PANELS), figsize=(15, 4.8))
    for ax, (metric, title, scale) in zip(axes, PANELS, strict=True):
        for colour, (provider, label) in enumerate(LABELS.items()):
            for mode, style in MODES.items():
                points = sorted(series.get((mode, provider, metric), {}).items())
                if points:
                    xs, ys = [p[0] for p in points], [p[1] * scale for p in points]
                    name = label if mode == "train_step" else f"{provider}, full fine-tuning"
                    ax.plot(xs, ys, style, color=f"C{colour}", label=name)
        ax.set_xlabel("response length R (tokens)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    # One legend under the panels, from the time panel (every case has its ms row).
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="lower center", ncol=2)
    fig.suptitle(
        f"One SymMPO step, LLaVA-1.5-7B shapes, B = 4: LoRA r = 128 (circles), full "
        f"fine-tuning (squares) ({device})",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.22, 1, 1))
    slug = "".join(c if c.isalnum() else "_" for c in device).strip("_").lower()
    out = pathlib.Path(args.out or DEFAULT_PATH.parent / f"end_to_end_{slug}.png")
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
