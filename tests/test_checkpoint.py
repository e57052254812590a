"""Checkpoints (symmpo.train.checkpoint): tensors and plain data only on load (a planted pickle
payload is refused, never run), manifests that prove a checkpoint whole, resume falling back
past damaged checkpoints (moved aside, never deleted), pruning that never leaves a partial
folder under a checkpoint's name, and train.py resuming through all of it."""

import json
import os
import pathlib
import random
import shutil

import numpy as np
import pytest
import torch
from train_script import load_train_script

from symmpo.train import checkpoint as ckpt

SMALL = ["--n_train", "24", "--heldout", "8", "--batch_size", "4", "--eval_batch_size", "8"]
FILES = ["weights.pt", "optimizer.pt", "scheduler.pt", "rng_rank0.pt"]


class Payload:
    """A pickle that, unpickled without weights_only, creates the folder ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def tiny_parts(lr=0.1):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def save(out, step, keep=10, **state):
    model, optimizer, scheduler = tiny_parts()
    return ckpt.save_checkpoint(out, step, model, optimizer, scheduler, state, keep)


def reseal(folder):
    """What an attacker who can write the folder can do too: a manifest matching the files."""
    ckpt.write_manifest(folder)


@pytest.fixture(autouse=True)
def _fresh_cache():
    getattr(ckpt, "_VERIFIED", {}).clear()


# -- 1. code execution from a checkpoint -----------------------------------------------------


def test_the_payload_is_real(tmp_path):
    """Sanity: unpickled without weights_only, the payload runs (so the tests below mean it)."""
    torch.save({"x": Payload(tmp_path / "ran")}, tmp_path / "f.pt")
    torch.load(tmp_path / "f.pt", weights_only=False)
    assert (tmp_path / "ran").exists()


@pytest.mark.parametrize("name", FILES)
def test_a_planted_payload_is_refused_naming_the_file_and_never_runs(tmp_path, name):
    folder = save(tmp_path / "out", 3)
    marker = tmp_path / "payload-ran"
    torch.save({"state": Payload(marker)}, folder / name)
    reseal(folder)  # the manifest does not protect against someone who can write the folder
    model, optimizer, scheduler = tiny_parts()
    with pytest.raises(ckpt.CheckpointError, match=rf"{name}: refused") as error:
        ckpt.load_checkpoint(folder, model, optimizer, scheduler)
    assert "tensors and plain data" in str(error.value)
    assert not marker.exists()
    if name == "weights.pt":  # evaluation's path too
        with pytest.raises(ckpt.CheckpointError, match="weights.pt.*refused"):
            ckpt.load_weights(folder, model)
        assert not marker.exists()


def test_every_file_of_a_checkpoint_loads_with_weights_only(tmp_path):
    folder = save(tmp_path / "out", 3)
    for name in FILES:
        torch.load(folder / name, weights_only=True)
    json.loads((folder / "trainer_state.json").read_text())


def test_rng_states_restore_the_same_draws(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.standard_normal()  # a cached Gaussian in both generators
    torch.save(ckpt.rng_state(), tmp_path / "rng.pt")

    def draws():
        return (
            [random.random(), random.gauss(0, 1)],
            np.random.standard_normal(3).tolist() + [np.random.randint(1 << 30)],
            torch.rand(3).tolist(),
        )

    expected = draws()
    draws()  # move every generator on
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draws() == expected


def test_resume_restores_optimizer_scheduler_and_rng(tmp_path):
    model, optimizer, scheduler = tiny_parts()
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    ckpt.save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {"x": 1}, 2)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    fresh, fresh_opt, fresh_sched = tiny_parts(lr=0.5)
    state = ckpt.load_checkpoint(tmp_path / "checkpoint-1", fresh, fresh_opt, fresh_sched)
    assert state == {"step": 1, "x": 1}
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    assert torch.equal(fresh.weight, model.weight)
    assert fresh_opt.state_dict()["param_groups"][0]["lr"] == pytest.approx(0.05)
    assert fresh_sched.state_dict()["last_epoch"] == scheduler.state_dict()["last_epoch"]


def test_deepspeed_files_are_checked_before_deepspeed_unpickles_them(tmp_path):
    """DeepSpeed loads its files without weights_only: they are checked first (its own state
    records pass; a payload is refused naming the file, and DeepSpeed never sees it)."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    folder = save(tmp_path / "out", 3)
    shards = folder / "accelerate_state" / "pytorch_model"
    shards.mkdir(parents=True)
    legit = {
        "loss_scaler": LossScaler(1.0),
        "zero_stage": ZeroStageEnum.weights,
        "x": torch.ones(2),
    }
    torch.save(legit, shards / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    reseal(folder)
    loaded = []

    class Accelerator:
        distributed_type = "DistributedType.DEEPSPEED"

        def load_state(self, path):
            loaded.append(path)

    model, optimizer, scheduler = tiny_parts()
    ckpt.load_checkpoint(folder, model, optimizer, scheduler, 0, Accelerator())
    assert loaded == [str(folder / "accelerate_state")]
    marker = tmp_path / "payload-ran"
    torch.save({"x": Payload(marker)}, shards / "zero_pp_rank_1_mp_rank_00_model_states.pt")
    reseal(folder)
    with pytest.raises(ckpt.CheckpointError, match="rank_1_mp_rank_00_model_states.pt: refused"):
        ckpt.load_checkpoint(folder, model, optimizer, scheduler, 0, Accelerator())
    assert not marker.exists() and len(loaded) == 1


# -- 2. checkpoints that prove themselves ------------------------------------------------------


def test_the_manifest_lists_every_file_with_size_and_hash(tmp_path):
    folder = save(tmp_path / "out", 3)
    (folder / "accelerate_state").mkdir()  # DeepSpeed's save_state: covered too
    (folder / "accelerate_state" / "shard.pt").write_bytes(b"x" * 10)
    ckpt.write_manifest(folder, 3)
    manifest = json.loads((folder / "manifest.json").read_text())
    files = {e["path"]: e for e in manifest["files"]}
    assert set(files) == {*FILES, "trainer_state.json", "accelerate_state/shard.pt"}
    assert files["accelerate_state/shard.pt"]["size"] == 10
    assert len(files["weights.pt"]["sha256"]) == 64
    ckpt.verify_checkpoint(folder)


def damage(folder, kind):
    """One way a file breaks; returns the file name the error must name."""
    if kind == "truncated weights":
        data = (folder / "weights.pt").read_bytes()
        (folder / "weights.pt").write_bytes(data[: len(data) // 2])
        return "weights.pt"
    if kind == "empty optimizer":
        (folder / "optimizer.pt").write_bytes(b"")
        return "optimizer.pt"
    if kind == "truncated state":
        text = (folder / "trainer_state.json").read_text()
        (folder / "trainer_state.json").write_text(text[: len(text) // 2])
        return "trainer_state.json"
    if kind == "bit rot":  # 4 KiB of garbage inside weights.pt, same size
        data = bytearray((folder / "weights.pt").read_bytes())
        start = max(0, len(data) // 2 - 2048)
        data[start : start + 4096] = os.urandom(min(4096, len(data) - start))
        (folder / "weights.pt").write_bytes(bytes(data))
        return "weights.pt"
    (folder / "scheduler.pt").unlink()
    return "scheduler.pt"


KINDS = ["truncated weights", "empty optimizer", "truncated state", "bit rot", "missing"]


def big_model_run(out, steps):
    """Checkpoints whose weights.pt is big enough for 4 KiB of rot to land in tensor data."""
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    for step in steps:
        ckpt.save_checkpoint(out, step, model, optimizer, scheduler, {"args": {}}, 10)
    return model, optimizer, scheduler


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_file_fails_verification_naming_it(tmp_path, kind):
    big_model_run(tmp_path, [3])
    folder = tmp_path / "checkpoint-3"
    name = damage(folder, kind)
    with pytest.raises(ckpt.CheckpointError, match=rf"checkpoint-3/{name}"):
        ckpt.verify_checkpoint(folder)
    model, optimizer, scheduler = big_model_run(tmp_path / "other", [])
    with pytest.raises(ckpt.CheckpointError, match=name):
        ckpt.load_weights(folder, model)  # evaluation verifies too


@pytest.mark.parametrize("kind", ["truncated weights", "empty optimizer", "truncated state"])
def test_a_damaged_file_read_without_the_manifest_check_names_it(tmp_path, kind):
    big_model_run(tmp_path, [3])
    folder = tmp_path / "checkpoint-3"
    name = damage(folder, kind)
    reseal(folder)  # the manifest agrees: the loader's own error must still name the file
    model, optimizer, scheduler = big_model_run(tmp_path / "other", [])
    with pytest.raises(ckpt.CheckpointError, match=rf"{name}: unreadable"):
        ckpt.load_checkpoint(folder, model, optimizer, scheduler)


@pytest.mark.parametrize("kind", KINDS)
def test_resume_falls_back_past_a_damaged_checkpoint_and_moves_it_aside(tmp_path, kind):
    big_model_run(tmp_path, [3, 6])
    name = damage(tmp_path / "checkpoint-6", kind)
    assert ckpt.latest_state(tmp_path)["step"] == 3  # what resume will use: nothing moved
    assert (tmp_path / "checkpoint-6").exists()
    said = []
    chosen = ckpt.resumable_checkpoint(tmp_path, log=said.append)
    assert chosen == tmp_path / "checkpoint-3"
    assert any(name in line and "checkpoint-6" in line for line in said), said
    aside = [p.name for p in tmp_path.glob("checkpoint-6.corrupt-*")]
    assert len(aside) == 1 and not (tmp_path / "checkpoint-6").exists()  # kept, renamed
    assert ckpt.list_checkpoints(tmp_path) == [tmp_path / "checkpoint-3"]


def test_stray_and_pre_manifest_folders_are_reported_ignored_and_kept(tmp_path):
    big_model_run(tmp_path, [3])
    (tmp_path / "checkpoint-99").mkdir()  # an empty stray folder
    old = tmp_path / "checkpoint-50"  # a checkpoint as written before manifests
    shutil.copytree(tmp_path / "checkpoint-3", old)
    (old / "manifest.json").unlink()
    (tmp_path / ".tmp-checkpoint-120").mkdir()  # a killed save's folder
    said = []
    assert ckpt.resumable_checkpoint(tmp_path, log=said.append) == tmp_path / "checkpoint-3"
    assert any("checkpoint-99" in line and "manifest" in line for line in said), said
    assert any("checkpoint-50" in line for line in said), said
    assert (tmp_path / "checkpoint-99").is_dir() and old.is_dir()
    assert ckpt.latest_state(tmp_path)["step"] == 3
    with pytest.raises(ckpt.CheckpointError, match="checkpoint-50: no manifest.json"):
        ckpt.verify_checkpoint(old)
    model, _, _ = big_model_run(tmp_path / "other", [])
    with pytest.raises(ckpt.CheckpointError, match="checkpoint-50"):
        ckpt.load_weights(old, model)


def test_an_unreadable_manifest_is_named(tmp_path):
    big_model_run(tmp_path, [3])
    (tmp_path / "checkpoint-3" / "manifest.json").write_text('{"files": [')
    with pytest.raises(ckpt.CheckpointError, match="checkpoint-3/manifest.json: unreadable"):
        ckpt.verify_checkpoint(tmp_path / "checkpoint-3")
    assert ckpt.resumable_checkpoint(tmp_path, log=lambda *a: None) is None
    assert len(list(tmp_path.glob("checkpoint-3.corrupt-*"))) == 1


def test_pruning_renames_before_deleting_and_leftovers_go_at_the_next_save(tmp_path, monkeypatch):
    big_model_run(tmp_path, [1, 2])
    real_rmtree = shutil.rmtree
    seen = []

    def killed_rmtree(path, *args, **kwargs):
        path = pathlib.Path(path)
        if path.exists() and path.name.startswith(".prune-"):
            seen.append(path.name)
            (path / "weights.pt").unlink()  # a kill half-way through the deletion
            raise KeyboardInterrupt
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_rmtree)
    model, optimizer, scheduler = big_model_run(tmp_path / "other", [])
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 3, model, optimizer, scheduler, {"args": {}}, 2)
    monkeypatch.setattr(ckpt.shutil, "rmtree", real_rmtree)
    assert seen == [".prune-checkpoint-1"]
    assert not (tmp_path / "checkpoint-1").exists()  # never a partial folder under the name
    for folder in ckpt.list_checkpoints(tmp_path):
        ckpt.verify_checkpoint(folder)
    (tmp_path / ".tmp-checkpoint-9").mkdir()
    ckpt.save_checkpoint(tmp_path, 4, model, optimizer, scheduler, {"args": {}}, 2)
    names = sorted(p.name for p in tmp_path.iterdir() if p.name != "other")
    assert names == ["checkpoint-3", "checkpoint-4"]


def test_save_fsyncs_every_file_before_the_manifest_and_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_rename = os.fsync, pathlib.Path.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(self, target):
        events.append(("rename", str(self)))
        return real_rename(self, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(pathlib.Path, "rename", rename)
    save(tmp_path, 5)
    synced = [pathlib.Path(p).name for kind, p in events if kind == "fsync"]
    for name in [*FILES, "trainer_state.json", "manifest.json", ".tmp-checkpoint-5"]:
        assert name in synced, name
    renamed = next(i for i, (kind, _) in enumerate(events) if kind == "rename")
    manifest = synced.index("manifest.json")
    assert manifest < renamed and all(n != "manifest.json" for n in synced[manifest + 1 :])
    assert synced.index("weights.pt") < manifest


# -- train.py resuming through it ---------------------------------------------------------------


def test_train_resumes_from_the_newest_intact_checkpoint(tmp_path):
    train = load_train_script()
    flags = [*SMALL, "--max_steps", "4", "--save_steps", "1", "--save_total_limit", "3"]
    flags += ["--eval_generate", "0"]
    full = train.main([*flags, "--output_dir", str(tmp_path / "full")])
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part)
    shutil.rmtree(part / "checkpoint-4")  # interrupted after step 3's checkpoint...
    damage(part / "checkpoint-3", "bit rot")  # ...which rotted
    (part / "checkpoint-99").mkdir()  # and a stray folder
    resumed = train.main([*flags, "--output_dir", str(part), "--resume"])
    assert [r["step"] for r in resumed["history"]] == [3, 4]
    expected = [r["loss"] for r in full["history"][2:]]
    assert [r["loss"] for r in resumed["history"]] == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert len(list(part.glob("checkpoint-3.corrupt-*"))) == 1
    assert (part / "checkpoint-99").is_dir()
    assert [p.name for p in ckpt.list_checkpoints(part)] == [
        "checkpoint-2",
        "checkpoint-3",
        "checkpoint-4",
    ]
    for folder in ckpt.list_checkpoints(part):
        ckpt.verify_checkpoint(folder)
    assert ckpt.latest_state(part)["step"] == 4
