"""Checkpoints that prove themselves: written into a temporary folder, sealed by a manifest,
renamed into place, read back as tensors and plain data only (``torch.load(weights_only=True)``:
a file holding other objects, e.g. a pickle that would run code, is refused naming the file).

``checkpoint-<step>/`` holds ``weights.pt`` (the trainable parameters: the LoRA adapters, or
the whole model), ``optimizer.pt``, ``scheduler.pt``, ``rng_rank<r>.pt`` per process (Python,
NumPy, torch and CUDA generator states as lists, numbers and tensors), ``trainer_state.json``
(step, data position, the run's arguments), and ``hf/`` (the model in the Hugging Face format:
``hf_export``, through ``save_checkpoint``'s ``export``). Under DeepSpeed, ``save_state`` writes
the (partitioned) model and optimizer into ``accelerate_state/`` for resuming; ``weights.pt``
holds the gathered trainable parameters for evaluation. ``manifest.json``, written and fsynced
last (after every file and folder), lists every other file: ``{"format": FORMAT, "step": N,
"files": [{"path": "weights.pt", "size": bytes, "sha256": hex}, ...]}`` (relative ``/`` paths).

``resumable_checkpoint`` picks the newest checkpoint that verifies, renaming damaged ones
``checkpoint-N.corrupt-<time>`` (never deleted). A ``checkpoint-<step>`` folder is never partial:
pruning renames to ``.prune-checkpoint-<step>`` before deleting; a killed save's ``.tmp-*`` and
``.prune-*`` folders go at the next save. Folders without a manifest (stray or incomplete) are
refused with a message naming them, and left in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import random
import shutil
import time

import numpy as np
import torch

PREFIX = "checkpoint-"
MANIFEST = "manifest.json"
FORMAT = "symmpo-checkpoint/1"
REQUIRED = ("weights.pt", "scheduler.pt", "rng_rank0.pt", "trainer_state.json")  # and more
#: A killed save's folders (``.old-``: the swap folder of earlier versions).
_LEFTOVERS = tuple(f".{kind}-{PREFIX}" for kind in ("tmp", "prune", "old"))


class CheckpointError(RuntimeError):
    """A checkpoint folder or file that cannot be used; the message names it and says why."""


class _SingleProcess:
    is_main_process, process_index = True, 0
    wait_for_everyone = staticmethod(lambda: None)


def _uses_deepspeed(accelerator) -> bool:
    return str(getattr(accelerator, "distributed_type", "")).endswith("DEEPSPEED")


def trainable_state(model) -> dict:
    return {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    """Python, NumPy, torch and CUDA generator states as lists, numbers and tensors."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(rng: dict) -> None:
    """Restore what ``rng_state`` returned: the same draws follow."""
    py, npy = rng["python"], rng["numpy"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(file: pathlib.Path, sync: bool = False) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        if sync:
            os.fsync(handle.fileno())
    return digest.hexdigest()


def write_manifest(folder, step: int | None = None) -> pathlib.Path:
    """Seal ``folder``: fsync every file (hashing it) and every folder, then write and fsync
    ``manifest.json`` listing each file's relative path, size and SHA-256."""
    folder = pathlib.Path(folder)
    files = []
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p != folder / MANIFEST):
        rel = file.relative_to(folder).as_posix()
        files.append({"path": rel, "size": file.stat().st_size, "sha256": _sha256(file, True)})
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        _fsync_dir(sub)
    manifest = folder / MANIFEST
    with open(manifest, "w") as handle:
        json.dump({"format": FORMAT, "step": step, "files": files}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    _fsync_dir(folder)
    _VERIFIED.pop(str(folder.resolve()), None)
    return manifest


def read_manifest(folder) -> dict:
    """The manifest of ``folder``, its entries checked; CheckpointError naming the folder
    (no manifest) or the manifest (unreadable)."""
    folder = pathlib.Path(folder)
    manifest = folder / MANIFEST
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a checkpoint folder")
    if not manifest.is_file():
        raise CheckpointError(
            f"{folder}: no {MANIFEST}: an incomplete or stray folder, or a checkpoint written "
            "before checkpoints carried manifests (not supported); not used"
        )
    try:
        data = json.loads(manifest.read_text())
        entries = {e["path"]: (int(e["size"]), str(e["sha256"])) for e in data["files"]}
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{manifest}: unreadable manifest ({error})") from None
    if data.get("format") != FORMAT:
        raise CheckpointError(f"{manifest}: unknown format {data.get('format')!r}")
    for rel in entries:
        parts = pathlib.PurePosixPath(rel).parts
        if not parts or rel.startswith("/") or ".." in parts:
            raise CheckpointError(f"{manifest}: entry {rel!r} is not a path inside the folder")
    missing = [name for name in REQUIRED if name not in entries]
    if not any(r == "optimizer.pt" or r.startswith("accelerate_state/") for r in entries):
        missing.append("optimizer.pt")
    if missing:
        raise CheckpointError(f"{manifest}: lists no {', '.join(missing)}")
    return {**data, "entries": entries}


#: Folders verified by this process: path -> the (size, mtime, inode) of every file then.
_VERIFIED: dict[str, tuple] = {}


def _signature(folder: pathlib.Path, rels) -> tuple:
    stats = [(folder / rel).stat() for rel in (MANIFEST, *sorted(rels))]
    return tuple((s.st_size, s.st_mtime_ns, s.st_ino) for s in stats)


def verify_checkpoint(path) -> None:
    """Check every file of a checkpoint folder against its manifest: CheckpointError naming the
    file and why (missing, size, SHA-256) or the manifest (absent, unreadable). A folder
    verified earlier by this process whose files are unchanged is not hashed again."""
    folder = pathlib.Path(path)
    entries = read_manifest(folder)["entries"]
    for rel, (size, _) in entries.items():
        file = folder / rel
        if not file.is_file():
            raise CheckpointError(f"{file}: missing (listed in {MANIFEST})")
        if (actual := file.stat().st_size) != size:
            raise CheckpointError(f"{file}: {actual} bytes, manifest says {size} (truncated?)")
    key, signature = str(folder.resolve()), _signature(folder, entries)
    if _VERIFIED.get(key) == signature:
        return
    for rel, (_, sha256) in entries.items():
        if _sha256(folder / rel) != sha256:
            raise CheckpointError(f"{folder / rel}: SHA-256 differs from the manifest (damaged)")
    _VERIFIED[key] = signature


def _numbered(output_dir) -> list[pathlib.Path]:
    steps = {p.name[len(PREFIX) :]: p for p in pathlib.Path(output_dir).glob(f"{PREFIX}*")}
    found = sorted((int(s), p) for s, p in steps.items() if s.isdigit() and p.is_dir())
    return [p for _, p in found]


def list_checkpoints(output_dir) -> list[pathlib.Path]:
    """Sealed checkpoints (a ``checkpoint-<step>`` folder with a manifest), oldest first; not
    verified (``resumable_checkpoint`` verifies)."""
    return [p for p in _numbered(output_dir) if (p / MANIFEST).is_file()]


def _move_aside(folder: pathlib.Path, tag: str) -> pathlib.Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = folder.with_name(f"{folder.name}.{tag}-{stamp}"), 1
    while aside.exists():
        aside, n = folder.with_name(f"{folder.name}.{tag}-{stamp}-{n}"), n + 1
    folder.rename(aside)
    return aside


def _choose(output_dir, log, move_aside: bool) -> pathlib.Path | None:
    for folder in reversed(_numbered(output_dir)):
        if not (folder / MANIFEST).is_file():
            log(f"{folder}: no {MANIFEST} (incomplete, stray, or older than manifests): ignored")
            continue
        try:
            verify_checkpoint(folder)
            return folder
        except CheckpointError as error:
            aside = f"; moved aside to {_move_aside(folder, 'corrupt').name}" if move_aside else ""
            log(f"checkpoint not usable: {error}{aside}")
    return None


def resumable_checkpoint(output_dir, log=print, accelerator=None) -> pathlib.Path | None:
    """The newest checkpoint in ``output_dir`` that verifies, or None. Each newer one that does
    not is reported (the file and why) and renamed ``checkpoint-N.corrupt-<time>`` (by the main
    process, before the others look); folders without a manifest are reported and left alone;
    ``.tmp-*`` folders are ignored."""
    acc = accelerator or _SingleProcess()
    chosen = _choose(output_dir, log, move_aside=True) if acc.is_main_process else None
    acc.wait_for_everyone()
    if not acc.is_main_process:
        chosen = _choose(output_dir, lambda *a, **k: None, move_aside=False)
    return chosen


def _remove(folder: pathlib.Path) -> None:
    """Delete a folder of ours, renamed ``.prune-*`` first: never partial under its name."""
    doomed = folder.with_name(f".prune-{folder.name}")
    shutil.rmtree(doomed, ignore_errors=True)
    folder.rename(doomed)
    shutil.rmtree(doomed)


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
    export=None,
):
    """``export(folder, gathered weights under DeepSpeed or None)``: more files, then sealed."""
    acc, gathered = accelerator or _SingleProcess(), None
    output_dir = pathlib.Path(output_dir)
    final = output_dir / f"{PREFIX}{step}"
    tmp = output_dir / f".tmp-{PREFIX}{step}"
    if acc.is_main_process:
        for leftover in output_dir.glob(".*"):  # a killed run's half-written or half-deleted
            if leftover.is_dir() and leftover.name.startswith(_LEFTOVERS):
                shutil.rmtree(leftover)
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
            gathered = {k.removeprefix(prefix): v for k, v in full.items()}
    elif acc.is_main_process:
        torch.save(trainable_state(model), tmp / "weights.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if acc.is_main_process:
        if export is not None:
            export(tmp, gathered)
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "trainer_state.json").write_text(
            json.dumps({"step": step, **state}, indent=1, default=str)
        )
    acc.wait_for_everyone()  # every process's files are in tmp: the main process seals them
    if acc.is_main_process:
        write_manifest(tmp, step)
        if (final / MANIFEST).is_file():  # a rerun reaching the same step: never in place
            _remove(final)
        elif final.exists():  # a stray folder of that name (no manifest): kept, renamed
            _move_aside(final, "stray")
        tmp.rename(final)
        _fsync_dir(output_dir)
        for stale in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            if stale != final:
                _remove(stale)
    acc.wait_for_everyone()
    return final


def _load(file: pathlib.Path, **kwargs):
    """``torch.load`` of tensors and plain data only; CheckpointError naming the file."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True, **kwargs)
    except Exception as error:
        text = str(error)
        if "Weights only load failed" in text:
            detail = next((ln for ln in text.splitlines() if "GLOBAL" in ln), "").strip()
            raise CheckpointError(
                f"{file}: refused: it holds objects other than tensors and plain data, which "
                f"loading could run as code (not written by symmpo, or tampered with). {detail}"
            ) from None
        raise CheckpointError(
            f"{file}: unreadable ({type(error).__name__}: {text.splitlines()[0] if text else ''}"
            "): truncated or damaged"
        ) from error


def _check_deepspeed_state(folder: pathlib.Path) -> None:
    """DeepSpeed's loader unpickles without weights_only: first show that every ``*.pt`` holds
    tensors, plain data and DeepSpeed's own state records only (mmap: no tensor data read)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    known = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
    torch.serialization.add_safe_globals(known)
    for file in sorted(folder.rglob("*.pt")):
        _load(file, mmap=True)


def read_trainer_state(path, verify: bool = True) -> dict:
    """A checkpoint's ``trainer_state.json`` (verified first unless ``verify=False``)."""
    path = pathlib.Path(path)
    if verify:
        verify_checkpoint(path)
    file = path / "trainer_state.json"
    try:
        state = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{file}: unreadable ({error}): truncated or damaged") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{file}: not a trainer state (no step)")
    return state


def load_weights(path, model) -> None:
    """Copy a checkpoint's trainable parameters into ``model`` (names must match), after
    verifying the checkpoint."""
    path = pathlib.Path(path)
    verify_checkpoint(path)
    weights = _load(path / "weights.pt")
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path / 'weights.pt'}: not a dict of parameters")
    params = dict(model.named_parameters())
    if missing := sorted(set(weights) - set(params)):
        raise ValueError(f"{path}: parameters {missing[:3]}... are not in the model (LoRA on/off?)")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def load_checkpoint(path, model, optimizer, scheduler, rank: int = 0, accelerator=None) -> dict:
    """Restore everything save_checkpoint saved (verified first); returns the trainer state."""
    path = pathlib.Path(path)
    entries = read_manifest(path)["entries"]
    state = read_trainer_state(path)  # verifies
    if accelerator is not None and _uses_deepspeed(accelerator):
        _check_deepspeed_state(path / "accelerate_state")
        accelerator.load_state(str(path / "accelerate_state"))
    else:
        load_weights(path, model)
        optimizer.load_state_dict(_load(path / "optimizer.pt"))
    scheduler.load_state_dict(_load(path / "scheduler.pt"))
    # Resumed with more processes than saved: rank 0's states.
    name = f"rng_rank{rank}.pt" if f"rng_rank{rank}.pt" in entries else "rng_rank0.pt"
    try:
        set_rng_state(_load(path / name))
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise CheckpointError(f"{path / name}: not an RNG state ({error!r})") from None
    return state


def latest_state(output_dir) -> dict | None:
    """The trainer state (step, data position, the run's arguments) of the checkpoint that
    resume will use (``resumable_checkpoint``'s choice, nothing moved), or None without one."""
    chosen = _choose(output_dir, lambda *a, **k: None, move_aside=False)
    return None if chosen is None else read_trainer_state(chosen, verify=False)


def saved_shared_attention(state: dict | None) -> str | None:
    """The --shared_attention route a saved run trained with (runs saved before the choice
    existed used the mask route), or None without a checkpoint or a shared forward."""
    saved = (state or {}).get("args", {})
    if saved.get("forward") != "shared":
        return None
    return saved.get("shared_attention", "mask")
