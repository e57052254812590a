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

LABELS = {
    "released_way": "(a) released code: 5B images, full logits, online reference",
    "naive": "(b) --forward naive + symmpo_loss_from_hidden",
    "shared": "(c) --forward shared",
    "shared_varlen": "(c') --forward shared --shared_attention varlen",
    "shared_varlen_liger": "(c') with --liger",
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
    for ax, metric, title in ((axes[0], "ms", "step time (ms)"),
                              (axes[1], "peak_mem_mb", "peak memory (GiB)")):  # fmt: skip
        for provider, label in LABELS.items():
            points = sorted(series.get((provider, metric), {}).items())
            if points:
                scale = 1 / 1024 if metric == "peak_mem_mb" else 1
                ax.plot([p[0] for p in points], [p[1] * scale for p in points], "o-", label=label)
        ax.set_xlabel("response length R (tokens)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
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
