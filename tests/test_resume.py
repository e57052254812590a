"""--resume is the same run (symmpo/train/resume.py): saved flags adopted, changes refused."""

import json

import pytest
from test_cli import run_train
from train_script import load_train_script

from symmpo.train.cli import UsageError, build_parser
from symmpo.train.resume import continue_run

SMALL = ["--n_train", "16", "--heldout", "4", "--batch_size", "4", "--eval_generate", "0"]


def saved_run(**changes) -> dict:
    args = vars(build_parser().parse_args([]))
    args.update({"batch_size": 8, "max_steps": 1200, "lr": 1e-3, "heldout": 64, **changes})
    return args


def test_flags_not_given_are_the_runs_own():
    saved = saved_run(lr=5e-4, seed=3, loss="dpo")
    args = continue_run(build_parser().parse_args(["--resume"]), {"resume"}, saved)
    assert (args.lr, args.seed, args.loss, args.batch_size) == (5e-4, 3, "dpo", 8)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--lr", "0.01"], "--lr 0.01 (the run has 0.001)"),
        (["--seed", "1"], "--seed 1 (the run has 0)"),
        (["--loss", "dpo"], "--loss dpo (the run has symmpo)"),
        (["--batch_size", "4"], "--batch_size 4 (the run has 8)"),
        (["--beta", "0.2"], "--beta 0.2 (the run has 0.1)"),
        (["--max_length", "512"], "--max_length 512 (the run has 2048)"),
        (["--lr_scheduler_type", "constant"], "--lr_scheduler_type constant (the run has cosine)"),
        (["--n_train", "100"], "--n_train 100 (the run has 384)"),
        (["--max_steps", "600"], "--max_steps 600 (the run has 1200)"),
    ],
)
def test_a_flag_that_changes_the_run_is_refused_naming_both_values(argv, named):
    args = build_parser().parse_args(["--resume", *argv])
    given = {"resume", argv[0][2:]}
    with pytest.raises(UsageError, match=r"--resume: .* is another run: ") as refused:
        continue_run(args, given, saved_run())
    assert named in str(refused.value)


def test_cadence_and_more_steps_may_change_and_are_said():
    said = []
    argv = ["--resume", "--save_steps", "5", "--eval_steps", "7", "--max_steps", "2000"]
    args = build_parser().parse_args(argv)
    given = {"resume", "save_steps", "eval_steps", "max_steps"}
    args = continue_run(args, given, saved_run(), log=said.append)
    assert (args.save_steps, args.eval_steps, args.max_steps) == (5, 7, 2000)
    assert said == [
        "--resume: continuing with --max_steps 1200 -> 2000, --save_steps 50 -> 5, "
        "--eval_steps None -> 7"
    ]


def test_train_script_refuses_a_changed_seed_and_continues_with_the_saved_lr(tmp_path, capsys):
    out = str(tmp_path / "run")
    train = load_train_script()
    train.main([*SMALL, "--lr", "5e-4", "--max_steps", "1", "--output_dir", out])
    status, err = run_train(["--resume", "--output_dir", out, "--seed", "1"], capsys)
    assert status == 2 and "--seed 1 (the run has 0)" in err
    resumed = train.main(["--resume", "--output_dir", out, "--max_steps", "2"])
    assert [row["step"] for row in resumed["history"]] == [2]
    state = json.loads((tmp_path / "run" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["args"]["lr"] == 5e-4 and state["args"]["n_train"] == 16
