"""DPO, mDPO and SymMPO on the built-in synthetic world, from the same supervised model, over seeds.

For each seed, every variant (by default ``--loss dpo``, ``mdpo`` and ``symmpo``) runs
``train.py`` with that seed and one shared supervised-model cache (``--sft_cache_dir``), so the
variants of a seed start from the same model. Each run's ``eval.jsonl`` gives the supervised
model's evaluation (``stage`` "sft", step 0) and the last one after preference training. The
script writes, under ``--results``:

- ``<name>.csv``: one row per (variant, seed) and one per seed's supervised model;
- ``<name>.md``: the table of means and sample standard deviations over seeds;
- ``<name>.png``: the same as bars with the spread as error bars.

(``--name``, default ``compare_losses``.)

Metrics (held-out, ``symmpo.eval.preference.evaluate_run``):

- ``described_rate``: greedy answers that parse as a description (a collapsed model's do not,
  and then name nothing absent either);
- ``hallucination_rate``: greedy answers naming an object absent from the image, and
  ``hallucination_change``: a run's rate minus its seed's supervised model's (the paired change);
  ``prior_hallucination_rate``: those naming a present object's missing partner (the prior's
  hallucination, which the rejected answers make; the rest misperceive a colour or shape);
- ``exact_rate``: greedy answers exactly right;
- ``logp_accuracy``: log p(y_w|m) > log p(y_l|m); ``swap_accuracy``: log p(y_w|m) >
  log p(y_w|m'); ``logp_chosen``: the mean log p(y_w|m).

Run from the repository root (about 15 minutes on 2 CPU cores with the defaults)::

    python benchmarks/compare_losses.py
    python benchmarks/compare_losses.py --name ablation --variant "symmpo=" \
        --variant "no pair=--pair_weight 0" --variant "no anchor=--anchor_weight 0"

``--variant "NAME=FLAGS"`` adds a run per seed with ``train.py``'s FLAGS (the loss is symmpo
unless FLAGS say otherwise); ``--train_flags`` go to every run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUPERVISED = "supervised"
DEFAULT_VARIANTS = {"dpo": "--loss dpo", "mdpo": "--loss mdpo", "symmpo": "--loss symmpo"}
#: (key in eval.jsonl, column label, decimals)
METRICS = (
    ("described_rate", "answers that describe", 3),
    ("hallucination_rate", "hallucination rate", 3),
    ("hallucination_change", "change vs supervised", 3),
    ("prior_hallucination_rate", "naming a missing partner", 3),
    ("exact_rate", "exact answers", 3),
    ("logp_accuracy", "preference acc.", 3),
    ("swap_accuracy", "image-swap acc.", 3),
    ("logp_chosen", "log p(y_w) on m", 1),
)


def parse_variant(text: str) -> tuple[str, str]:
    """``"NAME=FLAGS"`` -> (NAME, FLAGS); a clear error when the ``=`` is missing."""
    name, sep, flags = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"--variant wants NAME=FLAGS, got {text!r}")
    return name.strip(), flags.strip()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--variant",
        type=parse_variant,
        action="append",
        help="NAME=FLAGS: a run per seed with these train.py flags (default: dpo, mdpo, symmpo)",
    )
    p.add_argument(
        "--train_flags",
        default="--eval_generate 64",
        help="flags for every run (default: all 64 held-out questions answered greedily)",
    )
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one CPU thread each")
    p.add_argument("--work_dir", default="out/compare_losses", help="the runs' output folders")
    p.add_argument("--results", default="benchmarks/results", help="where the table goes")
    p.add_argument("--name", default="compare_losses", help="the result files' name")
    return p.parse_args(argv)


def run_folder(work_dir: pathlib.Path, name: str, seed: int) -> pathlib.Path:
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)
    return work_dir / f"{safe}-seed{seed}"


def train(flags: list[str], out: pathlib.Path, threads: int) -> None:
    """One ``train.py`` run in a child process (a run begun earlier is resumed, a finished one
    kept); its log goes to ``<out>.log``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    resume = ["--resume"] if (out / "run_args.json").exists() else []
    cmd = [sys.executable, str(ROOT / "train.py"), *flags, "--output_dir", str(out), *resume]
    with open(f"{out}.log", "w", encoding="utf-8") as log:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}); see {out}.log")


def read_evals(out: pathlib.Path) -> tuple[dict, dict]:
    """(the evaluation before preference training, the one after its last step) of a run: the
    first is the supervised model's (``stage`` "sft") when the run had a supervised stage.
    A run without its final evaluation (stopped during it) is an error, not a row."""
    rows = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines() if line]
    last_step = json.loads((out / "run_args.json").read_text())["max_steps"]
    before = next((r for r in rows if r["step"] == 0), None)
    after = next((r for r in rows if r["step"] == last_step and r["stage"] == "preference"), None)
    if before is None or after is None:
        raise RuntimeError(
            f"{out}: eval.jsonl lacks the evaluation at step {0 if before is None else last_step}; "
            "delete the folder to run it again"
        )
    return before, after


def summarize(rows: list[dict], names: list[str]) -> list[dict]:
    """Per name (in order): each metric's mean and sample standard deviation over the seeds."""
    table = []
    for name in names:
        mine = [r for r in rows if r["variant"] == name]
        entry = {"variant": name, "seeds": len(mine)}
        for key, _, _ in METRICS:
            values = [float(r[key]) for r in mine if r.get(key) not in (None, "")]
            entry[key] = statistics.fmean(values) if values else None
            entry[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        table.append(entry)
    return table


def markdown(table: list[dict]) -> str:
    """The table as Markdown: mean ± standard deviation over seeds."""
    head = "| model | seeds | " + " | ".join(label for _, label, _ in METRICS) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 2)]
    for entry in table:
        cells = []
        for key, _, digits in METRICS:
            mean = entry[key]
            cells.append(
                "n/a" if mean is None else f"{mean:.{digits}f} ± {entry[f'{key}_sd']:.{digits}f}"
            )
        lines.append(f"| {entry['variant']} | {entry['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: list[dict], path: pathlib.Path) -> None:
    """Bars (mean) with error bars (standard deviation over seeds), one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 4
    rows = -(-len(METRICS) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    names = [e["variant"] for e in table]
    colours = [plt.cm.tab10(i % 10) for i in range(len(names))]
    for ax, (key, label, _) in zip(axes.flat, METRICS, strict=False):
        means = [e[key] if e[key] is not None else float("nan") for e in table]
        ax.bar(names, means, yerr=[e[f"{key}_sd"] for e in table], capsize=4, color=colours)
        ax.set_title(label, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    for ax in list(axes.flat)[len(METRICS) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    variants = dict(args.variant) if args.variant else dict(DEFAULT_VARIANTS)
    if SUPERVISED in variants:
        raise SystemExit(f"--variant: the name {SUPERVISED!r} is the supervised model's row")
    work_dir = pathlib.Path(args.work_dir).resolve()  # the runs' cwd is the repository root
    cache = work_dir / "sft_cache"  # one supervised model per seed, shared by its variants
    common = shlex.split(args.train_flags)
    jobs = [  # variant-major: a seed's supervised model is trained by its first run
        (
            name,
            seed,
            [*common, *shlex.split(flags), "--seed", str(seed), "--sft_cache_dir", str(cache)],
        )
        for name, flags in variants.items()
        for seed in args.seeds
    ]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done = [
            pool.submit(train, flags, run_folder(work_dir, name, seed), threads)
            for name, seed, flags in jobs
        ]
        for future in done:
            future.result()
    rows = []
    for name, seed, _ in jobs:
        supervised, after = read_evals(run_folder(work_dir, name, seed))
        if name == next(iter(variants)):
            rows.append({"variant": SUPERVISED, "seed": seed, **supervised})
        rows.append({"variant": name, "seed": seed, **after})
    supervised = {r["seed"]: r["hallucination_rate"] for r in rows if r["variant"] == SUPERVISED}
    for row in rows:
        if row["variant"] != SUPERVISED:
            row["hallucination_change"] = row["hallucination_rate"] - supervised[row["seed"]]
    table = summarize(rows, [SUPERVISED, *variants])
    results = pathlib.Path(args.results).resolve()
    results.mkdir(parents=True, exist_ok=True)
    columns = ["variant", "seed", "step", *(key for key, _, _ in METRICS)]
    with open(results / f"{args.name}.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    text = markdown(table)
    (results / f"{args.name}.md").write_text(text, encoding="utf-8")
    plot(table, results / f"{args.name}.png")
    print(text, end="")
    print(f"written: {results / args.name}.csv, .md, .png")
    return table


if __name__ == "__main__":
    main()
