"""--resume is the same run (symmpo/train/resume.py): saved flags adopted, changes refused."""

import json
import signal
import subprocess
import sys

import pytest
from test_cli import run_train
from train_script import ROOT, load_train_script

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


def test_cache_folders_are_the_runs_own_unless_given_again(tmp_path):
    """A resumed run finds its caches where it made them (another folder would miss them and
    compute the reference or the supervised model again); given again, the new folder wins."""
    saved = saved_run(sft_cache_dir="/caches/sft", ref_cache_dir="/caches/ref")
    args = continue_run(build_parser().parse_args(["--resume"]), {"resume"}, saved)
    assert (args.sft_cache_dir, args.ref_cache_dir) == ("/caches/sft", "/caches/ref")
    given = build_parser().parse_args(["--resume", "--sft_cache_dir", "/moved/sft"])
    args = continue_run(given, {"resume", "sft_cache_dir"}, saved)
    assert (args.sft_cache_dir, args.ref_cache_dir) == ("/moved/sft", "/caches/ref")


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
        (["--n_train", "100"], "--n_train 100 (the run has 2400)"),
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


#: Runs train.py's main in a child process that SIGKILLs itself at the n-th call of a function:
#: argv[1] "module:attribute", argv[2] n, the rest train.py's flags.
KILLER = """
import importlib, os, signal, sys
target, n, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
module_name, _, attribute = target.partition(":")
owner_name, _, method = attribute.partition(".")
module = importlib.import_module(module_name)
owner = getattr(module, owner_name) if method else module
real = getattr(owner, method or attribute)
calls = []

def dying(*args, **kwargs):
    calls.append(1)
    if len(calls) == n:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

setattr(owner, method or attribute, dying)
sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
from train_script import load_train_script
load_train_script().main(argv)
"""

KILL_RUN = [
    *SMALL,
    "--max_steps",
    "6",
    "--save_steps",
    "2",
    "--save_total_limit",
    "1",
    "--logging_steps",
    "1",
    "--eval_steps",
    "3",
    "--eval_batch_size",
    "4",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    load_train_script().main([*KILL_RUN, "--output_dir", str(out)])
    return read_jsonl(out / "metrics.jsonl"), read_jsonl(out / "eval.jsonl")


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_run(out, uninterrupted):
    metrics, evals = read_jsonl(out / "metrics.jsonl"), read_jsonl(out / "eval.jsonl")
    assert [r["step"] for r in metrics] == [r["step"] for r in uninterrupted[0]]
    for got, expected in zip(metrics, uninterrupted[0], strict=True):
        for key in ("loss", "grad_norm", "lr", "accuracy_dpo", "reward_margin_pair2"):
            # Another process: float32 sums may round differently (about 1e-7 of a log-prob).
            assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=2e-6), (got["step"], key)
    assert [r["step"] for r in evals] == [r["step"] for r in uninterrupted[1]]
    for got, expected in zip(evals, uninterrupted[1], strict=True):
        assert got["reward_margin"] == pytest.approx(expected["reward_margin"], rel=1e-5, abs=1e-6)


def kill_then_resume(tmp_path, target: str, n: int):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, target, str(n), *KILL_RUN, "--output_dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    load_train_script().main(["--resume", "--output_dir", str(out)])
    return out


def test_killed_in_the_reference_pass_resumes_to_the_same_run(tmp_path, uninterrupted):
    # The third batch of reference scoring: two batches are cached, the rest are not.
    out = kill_then_resume(tmp_path, "symmpo.train.references:Scorer.__call__", 3)
    assert_same_run(out, uninterrupted)


def test_killed_while_saving_a_checkpoint_resumes_to_the_same_run(tmp_path, uninterrupted):
    # torch.save's sixth call: the step-4 checkpoint's second file (four files a checkpoint).
    out = kill_then_resume(tmp_path, "symmpo.train.checkpoint:torch.save", 6)
    assert_same_run(out, uninterrupted)


def test_killed_while_pruning_resumes_to_the_same_run(tmp_path, uninterrupted):
    # shutil.rmtree's second call: checkpoint-2, renamed .prune-checkpoint-2, not yet deleted.
    out = kill_then_resume(tmp_path, "symmpo.train.checkpoint:shutil.rmtree", 2)
    assert_same_run(out, uninterrupted)
    assert not list(out.glob(".prune-*"))  # the next save cleaned it up
