"""One CSV of benchmark rows, deduplicated by key (a rerun replaces the rows it measures again).

Columns: op,provider,mode,n_positions,vocab,hidden,dtype,metric,value,device,torch,triton,date
(metric: ms (median), peak_mem_mb, gbps, tflops, tokens_per_s, resident_mem_mb). The file
defaults to benchmarks/results/results.csv; smoke runs (SYMMPO_BENCH_TINY=1, and the tiny CPU
shape of bench_end_to_end.py) write to the untracked smoke.csv beside it; SYMMPO_RESULTS_CSV
names another (the device script writes under $OUT, and
`python benchmarks/results_csv.py merge FILE...` folds such files in). The rows written in this
process are kept in SESSION_ROWS: benchmarks/conftest.py prints them as a table at the end of a
pytest run.
"""

from __future__ import annotations

import csv
import datetime
import os
import pathlib
import sys

#: What was measured (op, provider, mode and shape), the metric and its value, and where.
COLUMNS = ["op", "provider", "mode", "n_positions", "vocab", "hidden", "dtype", "metric"]
COLUMNS += ["value", "device", "torch", "triton", "date"]
KEY = [c for c in COLUMNS if c not in ("value", "date")]
DEFAULT_PATH = pathlib.Path(__file__).resolve().parent / "results" / "results.csv"


#: Where smoke runs (SYMMPO_BENCH_TINY=1) write: untracked, so they never mix with measurements.
SMOKE_PATH = DEFAULT_PATH.with_name("smoke.csv")


#: Every row written by this process, in order (a rerun of a key replaces nothing here).
SESSION_ROWS: list[dict[str, str]] = []
#: The files those rows went to.
SESSION_PATHS: list[pathlib.Path] = []


def results_path(smoke: bool = False) -> pathlib.Path:
    """SYMMPO_RESULTS_CSV if set; else smoke.csv for smoke runs (``smoke`` or
    SYMMPO_BENCH_TINY=1), results.csv otherwise."""
    if "SYMMPO_RESULTS_CSV" in os.environ:
        return pathlib.Path(os.environ["SYMMPO_RESULTS_CSV"])
    if smoke or os.environ.get("SYMMPO_BENCH_TINY") == "1":
        return SMOKE_PATH
    return DEFAULT_PATH


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


def write_rows(rows: list[dict], path: pathlib.Path | None = None, smoke: bool = False) -> None:
    """Append ``rows`` (dicts with the COLUMNS) to the CSV, replacing rows of the same key.

    Without ``path``: results_path(smoke). The rows are also added to SESSION_ROWS."""
    path = path or results_path(smoke)
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = {tuple(r[k] for k in KEY): r for r in read_rows(path)}
    new = [{k: str(row[k]) for k in COLUMNS} for row in rows]
    for row in new:
        merged[tuple(row[k] for k in KEY)] = row
    ordered = sorted(merged.values(), key=lambda r: tuple(r[k] for k in KEY))
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(ordered)
    tmp.replace(path)
    SESSION_ROWS.extend(new)
    if path not in SESSION_PATHS:
        SESSION_PATHS.append(path)


def make_row(op, provider, mode, n_positions, vocab, hidden, dtype, metric, value, env=None):
    env = env or environment()
    dtype = str(dtype).replace("torch.", "")
    values = (op, provider, mode, n_positions, vocab, hidden, dtype, metric, f"{value:.6g}")
    return {**dict(zip(COLUMNS[: len(values)], values, strict=True)), **env}


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "merge":
        sys.exit("usage: python benchmarks/results_csv.py merge FILE [FILE ...]")
    for name in sys.argv[2:]:
        write_rows(read_rows(pathlib.Path(name)), DEFAULT_PATH)
    print(f"merged {len(sys.argv) - 2} file(s) into {DEFAULT_PATH}")
