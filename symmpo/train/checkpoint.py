"""Atomic checkpoints: written into a temporary folder, then renamed into place.

``checkpoint-<step>/`` holds ``weights.pt`` (the trainable parameters: the LoRA adapters, or
the whole model), ``optimizer.pt``, ``scheduler.pt``, ``rng_rank<r>.pt`` per process (Python,
NumPy, torch and CUDA generator states) and ``trainer_state.json`` (step, data position, the
run's arguments). Under DeepSpeed, whose optimizer state is partitioned, accelerate's
``save_state`` writes the model and optimizer for resuming, and ``weights.pt`` holds the
gathered trainable parameters for evaluation. A folder of that name exists only
once complete; the last ``keep`` are kept.
"""

from __future__ import annotations

import json
import pathlib
import random
import shutil

import numpy as np
import torch

PREFIX = "checkpoint-"


class _SingleProcess:
    is_main_process, process_index = True, 0

    def wait_for_everyone(self):
        pass


def _uses_deepspeed(accelerator) -> bool:
    return str(getattr(accelerator, "distributed_type", "")).endswith("DEEPSPEED")


def trainable_state(model) -> dict:
    return {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def save_checkpoint(
    output_dir,
    step: int,
    model,
    optimizer,
    scheduler,
    state: dict,
    keep: int,
    accelerator=None,
    engine=None,
):
    acc = accelerator or _SingleProcess()
    output_dir = pathlib.Path(output_dir)
    final = output_dir / f"{PREFIX}{step}"
    tmp = output_dir / f".tmp-{PREFIX}{step}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng_rank{acc.process_index}.pt")
    if _uses_deepspeed(acc):
        acc.save_state(str(tmp / "accelerate_state"))
        # weights.pt too, for `python -m symmpo.evaluate`: the engine's (gathered) state dict,
        # trainable entries only (collective under ZeRO-3: every process calls it).
        full = acc.get_state_dict(engine)
        if acc.is_main_process:
            names = [n for n, p in model.named_parameters() if p.requires_grad]
            prefix = "model." if names and f"model.{names[0]}" in full else ""
            torch.save({n: full[prefix + n].cpu() for n in names}, tmp / "weights.pt")
    elif acc.is_main_process:
        torch.save(trainable_state(model), tmp / "weights.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if acc.is_main_process:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "trainer_state.json").write_text(
            json.dumps({"step": step, **state}, indent=1, default=str)
        )
    acc.wait_for_everyone()
    if acc.is_main_process:
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
    acc.wait_for_everyone()
    return final


def list_checkpoints(output_dir) -> list[pathlib.Path]:
    """Complete checkpoints, oldest first."""
    output_dir = pathlib.Path(output_dir)
    if not output_dir.exists():
        return []
    found = [p for p in output_dir.glob(f"{PREFIX}*") if p.name[len(PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def load_weights(path, model) -> None:
    """Copy a checkpoint's trainable parameters into ``model`` (names must match)."""
    weights = torch.load(pathlib.Path(path) / "weights.pt", map_location="cpu")
    params = dict(model.named_parameters())
    missing = sorted(set(weights) - set(params))
    if missing:
        raise ValueError(f"{path}: parameters {missing[:3]}... are not in the model (LoRA on/off?)")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def load_checkpoint(path, model, optimizer, scheduler, rank: int = 0, accelerator=None) -> dict:
    """Restore everything saved by save_checkpoint; returns the trainer state."""
    path = pathlib.Path(path)
    if accelerator is not None and _uses_deepspeed(accelerator):
        accelerator.load_state(str(path / "accelerate_state"))
    else:
        load_weights(path, model)
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu"))
    rng_file = path / f"rng_rank{rank}.pt"
    if not rng_file.exists():  # resumed with more processes than saved: rank 0's states
        rng_file = path / "rng_rank0.pt"
    rng = torch.load(rng_file, map_location="cpu", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "trainer_state.json").read_text())


def latest_state(output_dir) -> dict | None:
    """The trainer state (step, data position, the run's arguments) of the latest complete
    checkpoint in ``output_dir``, or None without one."""
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        return None
    return json.loads((checkpoints[-1] / "trainer_state.json").read_text())


def saved_shared_attention(state: dict | None) -> str | None:
    """The --shared_attention route a saved run trained with (runs saved before the choice
    existed used the mask route), or None without a checkpoint or a shared forward."""
    saved = (state or {}).get("args", {})
    if saved.get("forward") != "shared":
        return None
    return saved.get("shared_attention", "mask")
