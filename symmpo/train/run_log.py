"""A run's logs on disk and in memory: JSON lines, metrics averaged over processes, peak memory.

``metrics.jsonl`` gets one row per logged step, ``eval.jsonl`` one row per evaluation; a
resumed run first drops the rows its checkpoint does not cover, so the logs of a resumed run
equal those of an uninterrupted one.
"""

from __future__ import annotations

import json
import pathlib
import resource

import torch


def append_jsonl(path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def read_rows(path, log=print) -> list[dict]:
    """The rows of a JSONL log. A torn last line (a write cut short by a kill or a full disk)
    is dropped with a message; a bad line elsewhere is an error naming the file and line."""
    path = pathlib.Path(path)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number < len(lines):
                raise ValueError(f"{path}:{number}: not a JSON line ({error})") from None
            log(f"{path}: dropped a torn last line ({line[:60]!r})")
    return rows


def keep_rows(path, keep, log=print) -> None:
    """Rewrite a JSONL log with only the rows ``keep`` accepts (atomically; a torn last line
    is dropped, see ``read_rows``)."""
    path = pathlib.Path(path)
    if not path.exists():
        return
    rows = read_rows(path, log)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows if keep(r)), encoding="utf-8")
    tmp.replace(path)


def mean_over_processes(accelerator, logged: list[dict]) -> dict:
    """Metrics averaged over this process's micro-batches, then over processes."""
    names = list(logged[0])
    local = torch.tensor([[m[k] for k in names] for m in logged], dtype=torch.float64).mean(0)
    total = accelerator.reduce(local.to(accelerator.device), reduction="mean")
    return dict(zip(names, total.cpu().tolist(), strict=True))


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory, or the process's peak resident set on the CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
