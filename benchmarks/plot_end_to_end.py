"""Plot step time and peak memory against response length for the end-to-end benchmark.

    python benchmarks/plot_end_to_end.py [--device "NVIDIA H100 80GB HBM3"] [--out FILE]

Reads benchmarks/results/results.csv (rows of bench_end_to_end.py) and draws, for one device,
one line per provider (released_way, naive, shared, shared_varlen, shared_varlen_liger) in two
panels.
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
    "released_way": "released_way: released code's step (5B images, full logits, online ref.)",
    "naive": "naive: --forward naive + symmpo_loss_from_hidden",
    "shared": "shared: --forward shared --shared_attention mask",
    "shared_varlen": "shared_varlen: --forward shared (varlen route, its default on CUDA)",
    "shared_varlen_liger": "shared_varlen_liger: the same with --liger",
}


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
    series = collections.defaultdict(dict)
    for r in rows:
        if r["device"] == device:
            series[(r["provider"], r["metric"])][int(r["n_positions"])] = float(r["value"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    panels = ((axes[0], "ms", "step time (ms)"), (axes[1], "peak_mem_mb", "peak memory (GiB)"))
    for ax, metric, title in panels:
        for provider, label in LABELS.items():
            points = sorted(series.get((provider, metric), {}).items())
            if points:
                scale = 1 / 1024 if metric == "peak_mem_mb" else 1
                ax.plot([p[0] for p in points], [p[1] * scale for p in points], "o-", label=label)
        ax.set_xlabel("response length R (tokens)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    # In the memory panel's empty band between the two groups of lines (CPU rows: no memory).
    legend_ax = axes[1] if axes[1].get_lines() else axes[0]
    legend_ax.legend(fontsize=7, loc="center")
    fig.suptitle(
        f"One SymMPO step, LLaVA-1.5-7B shapes, B = 4, LoRA r = 128 ({device})", fontsize=9
    )
    fig.tight_layout()
    slug = "".join(c if c.isalnum() else "_" for c in device).strip("_").lower()
    out = pathlib.Path(args.out or DEFAULT_PATH.parent / f"end_to_end_{slug}.png")
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
