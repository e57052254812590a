"""The run's JSONL logs (symmpo/train/run_log.py): a torn last line does not block a resume."""

import json

import pytest
from train_script import load_train_script

from symmpo.train.run_log import keep_rows, read_rows

SMALL = ["--n_train", "16", "--heldout", "4", "--batch_size", "4", "--eval_generate", "0"]


def test_torn_last_line_is_dropped_with_a_message(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    said = []
    keep_rows(path, lambda row: row["step"] <= 2, log=said.append)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert said and "dropped a torn last line" in said[0]


def test_a_bad_line_before_the_last_is_an_error_naming_it(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"eval.jsonl:2: not a JSON line"):
        read_rows(path)


def test_resume_after_a_torn_metrics_line(tmp_path):
    out = tmp_path / "run"
    argv = [*SMALL, "--logging_steps", "1", "--save_steps", "1", "--output_dir", str(out)]
    train = load_train_script()
    train.main([*argv, "--max_steps", "2"])
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.')  # a full disk cut this append short
    result = train.main(["--resume", "--output_dir", str(out), "--max_steps", "3"])
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()]
    assert steps == [1, 2, 3] and [r["step"] for r in result["history"]] == [3]
