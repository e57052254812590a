"""One CSV of benchmark rows, deduplicated by key (a rerun replaces the rows it measures again).

Columns: op,provider,mode,n_positions,vocab,hidden,dtype,metric,value,device,torch,triton,date
(metric: ms (median), peak_mem_mb, gbps, tflops, tokens_per_s). The file defaults to
benchmarks/results/results.csv (smoke runs, SYMMPO_BENCH_TINY=1: the untracked smoke.csv beside
it); SYMMPO_RESULTS_CSV names another (the device script writes under $OUT, and
`python benchmarks/results_csv.py merge FILE...` folds such files in).
"""

from __future__ import annotations

import csv
import datetime
import os
import pathlib
import sys

COLUMNS = [
    "op", "provider", "mode", "n_positions", "vocab", "hidden", "dtype",
    "metric", "value", "device", "torch", "triton", "date",
]  # fmt: skip
KEY = [c for c in COLUMNS if c not in ("value", "date")]
DEFAULT_PATH = pathlib.Path(__file__).resolve().parent / "results" / "results.csv"


#: Where smoke runs (SYMMPO_BENCH_TINY=1) write: untracked, so they never mix with measurements.
SMOKE_PATH = DEFAULT_PATH.with_name("smoke.csv")


def results_path() -> pathlib.Path:
    if "SYMMPO_RESULTS_CSV" in os.environ:
        return pathlib.Path(os.environ["SYMMPO_RESULTS_CSV"])
    return SMOKE_PATH if os.environ.get("SYMMPO_BENCH_TINY") == "1" else DEFAULT_PATH


def environment() -> dict[str, str]:
    """device, torch and triton versions and today's date, for every row."""
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:  # pragma: no cover - triton is a Linux dependency
        triton_version = "none"
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        device = f"cpu ({os.cpu_count()} cores)"
    return {
        "device": device,
        "torch": torch.__version__,
        "triton": triton_version,
        "date": datetime.date.today().isoformat(),
    }


def read_rows(path: pathlib.Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_rows(rows: list[dict], path: pathlib.Path | None = None) -> None:
    """Append ``rows`` (dicts with the COLUMNS) to the CSV, replacing rows of the same key."""
    path = path or results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = {tuple(r[k] for k in KEY): r for r in read_rows(path)}
    for row in rows:
        row = {k: str(row[k]) for k in COLUMNS}
        merged[tuple(row[k] for k in KEY)] = row
    ordered = sorted(merged.values(), key=lambda r: tuple(r[k] for k in KEY))
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(ordered)
    tmp.replace(path)


def make_row(op, provider, mode, n_positions, vocab, hidden, dtype, metric, value, env=None):
    env = env or environment()
    dtype = str(dtype).replace("torch.", "")
    return {
        "op": op, "provider": provider, "mode": mode, "n_positions": n_positions,
        "vocab": vocab, "hidden": hidden, "dtype": dtype, "metric": metric,
        "value": f"{value:.6g}", **env,
    }  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "merge":
        sys.exit("usage: python benchmarks/results_csv.py merge FILE [FILE ...]")
    for name in sys.argv[2:]:
        write_rows(read_rows(pathlib.Path(name)), DEFAULT_PATH)
    print(f"merged {len(sys.argv) - 2} file(s) into {DEFAULT_PATH}")
