"""train.py's command line (symmpo/train/cli.py): a newcomer's mistakes end in one line.

Every bad flag stops before any work with one line on stderr naming the flag, the value and what
is allowed, exit status 2 and no traceback; --help documents every flag with its default.
"""

import json
import subprocess
import sys

import pytest
from train_script import ROOT, load_train_script

from symmpo.train.cli import build_parser, run_main
from symmpo.train.synthetic import make_synthetic_records

BAD_FLAGS = [
    (["--max_steps", "-1"], "--max_steps", "-1", ">= 1"),
    (["--max_steps", "0"], "--max_steps", "0", ">= 1"),
    (["--batch_size", "0"], "--batch_size", "0", ">= 1"),
    (["--grad_accum", "0"], "--grad_accum", "0", ">= 1"),
    (["--global_batch_size", "-8"], "--global_batch_size", "-8", ">= 1"),
    (["--lr", "-1"], "--lr", "-1", "> 0"),
    (["--lr", "nan"], "--lr", "nan", "> 0"),
    (["--lr", "0"], "--lr", "0", "> 0"),
    (["--eval_batch_size", "0"], "--eval_batch_size", "0", ">= 1"),
    (["--lr", "fast"], "--lr", "'fast'", "a number"),
    (["--max_length", "0"], "--max_length", "0", ">= 1"),
    (["--save_total_limit", "0"], "--save_total_limit", "0", ">= 1"),
    (["--save_steps", "0"], "--save_steps", "0", ">= 1"),
    (["--logging_steps", "0"], "--logging_steps", "0", ">= 1"),
    (["--eval_steps", "0"], "--eval_steps", "0", ">= 1"),
    (["--warmup_ratio", "1.5"], "--warmup_ratio", "1.5", "[0, 1)"),
    (["--lora_dropout", "1"], "--lora_dropout", "1", "[0, 1)"),
    (["--beta", "0"], "--beta", "0", "> 0"),
    (["--heldout", "-1"], "--heldout", "-1", ">= 0"),
    (["--loss", "ipo"], "--loss", "'ipo'", "symmpo"),
]


def run_train(argv, capsys):
    """train.py's main through run_main, as `python train.py ARGV` runs it: (status, stderr)."""
    with pytest.raises(SystemExit) as stopped:
        run_main(load_train_script().main, argv, prog="train.py")
    return stopped.value.code, capsys.readouterr().err


def assert_one_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize(("argv", "flag", "value", "allowed"), BAD_FLAGS)
def test_bad_flag_is_one_line_with_status_2(argv, flag, value, allowed, tmp_path, capsys):
    status, err = run_train([*argv, "--output_dir", str(tmp_path / "out")], capsys)
    assert status == 2
    assert_one_line(err, flag, value, allowed)
    assert not (tmp_path / "out").exists()  # stopped before any work


def test_missing_data_is_reported_first(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text("{}\n")  # an occupied output folder as well
    missing = str(tmp_path / "nonexistent")
    status, err = run_train(["--data", missing, "--output_dir", str(tmp_path)], capsys)
    assert status == 2
    assert_one_line(err, "--data", missing, "no such file or folder")


def test_resume_without_a_run_is_refused(tmp_path, capsys):
    status, err = run_train(["--resume", "--output_dir", str(tmp_path / "empty")], capsys)
    assert status == 2
    assert_one_line(err, "--resume", "holds no run to resume")


def test_occupied_output_dir_is_refused(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    status, err = run_train(["--output_dir", str(tmp_path)], capsys)
    assert status == 2
    assert_one_line(err, "--output_dir", "holds an earlier run", "--resume")
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'  # nothing overwritten


def test_global_batch_that_does_not_divide(tmp_path, capsys):
    argv = ["--batch_size", "4", "--global_batch_size", "6", "--output_dir", str(tmp_path)]
    status, err = run_train(argv, capsys)
    assert status == 2
    assert_one_line(err, "--global_batch_size 6", "--batch_size 4", "multiples of 4")


def write_jsonl_data(folder, n: int):
    """n synthetic records as JSONL with image files, as a user's own data would come."""
    lines = []
    for row in make_synthetic_records(n, seed=3):
        for k in (1, 2):
            name = f"img_{row['idx']}_{k}.png"
            (folder / name).write_bytes(row.pop(f"image_{k}")["bytes"])
            row[f"image_path_{k}"] = name
        lines.append(json.dumps({k: v for k, v in row.items() if not k.startswith("scene")}))
    path = folder / "data.jsonl"
    path.write_text("\n".join(lines))
    return path


def test_small_data_keeps_training_records(tmp_path):
    """12 records: the default held-out split takes one, not all of them, and training runs."""
    path = write_jsonl_data(tmp_path, 12)
    out = tmp_path / "out"
    result = load_train_script().main(
        ["--data", str(path), "--output_dir", str(out), "--max_steps", "1", "--eval_generate", "0"]
    )
    assert len(result["history"]) == 1
    assert len(json.loads((out / "eval.jsonl").read_text().splitlines()[0])) > 1


def test_too_few_training_records_names_heldout(tmp_path, capsys):
    path = write_jsonl_data(tmp_path, 12)
    argv = ["--data", str(path), "--heldout", "6", "--output_dir", str(tmp_path / "out")]
    status, err = run_train(argv, capsys)
    assert status == 2
    assert_one_line(err, "6 training records", "6 held out (--heldout)", "global batch of 8")


def test_heldout_of_every_record_is_refused(tmp_path, capsys):
    path = write_jsonl_data(tmp_path, 12)
    argv = ["--data", str(path), "--heldout", "12", "--output_dir", str(tmp_path / "out")]
    status, err = run_train(argv, capsys)
    assert status == 2
    assert_one_line(err, "--heldout 12", "12 records")


def test_help_documents_every_flag_with_its_default():
    parser = build_parser()
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help and len(action.help) > 8, action.option_strings
        formatted = parser._get_formatter()._expand_help(action)
        assert "default:" in formatted, action.option_strings


def test_script_prints_one_line_and_no_traceback(tmp_path):
    """The real command, as a newcomer types it."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--batch_size", "0"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2
    assert_one_line(proc.stderr, "--batch_size", "0")
    assert not (tmp_path / "out").exists()


def test_bad_record_is_one_line_with_status_1(tmp_path, capsys):
    path = write_jsonl_data(tmp_path, 12)
    lines = path.read_text().splitlines()
    record = json.loads(lines[3])
    record["resp_1_w"] = ""
    lines[3] = json.dumps(record)
    path.write_text("\n".join(lines))
    status, err = run_train(["--data", str(path), "--output_dir", str(tmp_path / "out")], capsys)
    assert status == 1
    assert_one_line(err, f"idx={record['idx']}", "resp_1_w", "--skip_bad_records")
