"""Non-finite steps (symmpo/train/update_guard.py): skipped and counted; a run of them stops
training before a checkpoint of non-finite weights is written."""

import math

import pytest
import torch
from test_cli import run_train
from train_script import load_train_script

from symmpo.train import build
from symmpo.train.objectives import PolicyStep
from symmpo.train.update_guard import NonFiniteTraining, UpdateGuard

SMALL = ["--n_train", "16", "--heldout", "4", "--batch_size", "4", "--eval_generate", "0"]


def test_guard_skips_counts_and_stops_after_patience():
    guard = UpdateGuard(patience=2)
    assert guard.allows(1, torch.tensor(1.0), [torch.tensor(0.5)])
    assert not guard.allows(2, torch.tensor(float("nan")))
    assert not guard.allows(3, torch.tensor(1.0), [torch.tensor(float("inf"))])
    with pytest.raises(NonFiniteTraining, match=r"step 4: .* 3 update\(s\) in a row"):
        guard.allows(4, float("nan"))
    assert guard.skipped == 3
    assert UpdateGuard(stepped_already=True).allows(1, 2.0)
    with pytest.raises(NonFiniteTraining):  # DeepSpeed stepped already: stop at once
        UpdateGuard(stepped_already=True).allows(1, float("inf"))


def test_a_nan_step_is_skipped_and_training_goes_on(tmp_path, monkeypatch):
    real_forward, calls = PolicyStep.forward, []

    def nan_on_second_call(self, batch, ref_logps):
        out = real_forward(self, batch, ref_logps)
        calls.append(1)
        if len(calls) == 2:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(PolicyStep, "forward", nan_on_second_call)
    result = load_train_script().main(
        [*SMALL, "--max_steps", "4", "--logging_steps", "1", "--output_dir", str(tmp_path)]
    )
    assert [row["skipped_updates"] for row in result["history"]] == [0, 1, 1, 1]
    assert math.isnan(result["history"][1]["grad_norm"])
    weights = torch.load(tmp_path / "checkpoint-4" / "weights.pt", weights_only=True)
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_nan_losses_in_a_row_stop_the_run_before_a_checkpoint(tmp_path, monkeypatch, capsys):
    real_forward = PolicyStep.forward

    def always_nan(self, batch, ref_logps):
        out = real_forward(self, batch, ref_logps)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(PolicyStep, "forward", always_nan)
    out = tmp_path / "run"
    argv = [*SMALL, "--max_steps", "6", "--save_steps", "2", "--output_dir", str(out)]
    status, err = run_train(argv, capsys)
    assert status == 1
    assert "stopped: step 4: the loss or gradient norm was not finite in 4 update(s)" in err
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]  # skipped updates
    weights = torch.load(out / "checkpoint-2" / "weights.pt", weights_only=True)
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_nan_weights_are_refused_at_the_reference_pass(tmp_path, monkeypatch, capsys):
    real_build_policy = build.build_policy

    def poisoned(*args, **kwargs):
        model, *rest = real_build_policy(*args, **kwargs)
        with torch.no_grad():
            model.lm_head.weight[0, 0] = float("nan")
        return (model, *rest)

    monkeypatch.setattr(build, "build_policy", poisoned)
    out = tmp_path / "run"
    status, err = run_train([*SMALL, "--max_steps", "2", "--output_dir", str(out)], capsys)
    assert status == 1 and "Traceback" not in err
    assert "the reference pass scored 20 record(s) as non-finite" in err.strip().splitlines()[-1]
    assert not list(out.glob("checkpoint-*")) and not (out / "metrics.jsonl").exists()
