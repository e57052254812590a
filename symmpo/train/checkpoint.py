"""Atomic checkpoints: written into a temporary folder, then renamed into place.

``checkpoint-<step>/`` holds ``weights.pt`` (the trainable parameters: the LoRA adapters, or
the whole model), ``optimizer.pt``, ``scheduler.pt``, ``rng.pt`` (Python, NumPy, torch and CUDA
generator states) and ``trainer_state.json`` (step, data position). A folder of that name exists
only once complete; the last ``keep`` are kept.
"""

from __future__ import annotations

import json
import pathlib
import random
import shutil

import numpy as np
import torch

PREFIX = "checkpoint-"


def trainable_state(model) -> dict:
    return {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(output_dir, step: int, model, optimizer, scheduler, state: dict, keep: int):
    output_dir = pathlib.Path(output_dir)
    final = output_dir / f"{PREFIX}{step}"
    tmp = output_dir / f".tmp-{PREFIX}{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(trainable_state(model), tmp / "weights.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    torch.save(rng, tmp / "rng.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **state}, indent=1))
    if final.exists():  # a rerun reaching the same step: swap, never overwrite in place
        old = output_dir / f".old-{PREFIX}{step}"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    for stale in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(stale)
    return final


def list_checkpoints(output_dir) -> list[pathlib.Path]:
    """Complete checkpoints, oldest first."""
    output_dir = pathlib.Path(output_dir)
    if not output_dir.exists():
        return []
    found = [p for p in output_dir.glob(f"{PREFIX}*") if p.name[len(PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def load_checkpoint(path, model, optimizer, scheduler) -> dict:
    """Restore everything saved by save_checkpoint; returns the trainer state."""
    path = pathlib.Path(path)
    weights = torch.load(path / "weights.pt", map_location="cpu")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu"))
    rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "trainer_state.json").read_text())
