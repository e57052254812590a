"""Two CPU processes (DDP, DeepSpeed ZeRO-2 and ZeRO-3; gloo) train exactly like one process with
the same global batch, launched as on GPUs: `accelerate launch --config_file configs/...`."""

import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest
from train_script import load_train_script

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMON = (
    "--n_train 32 --heldout 8 --batch_size 4 --global_batch_size 8 --max_steps 4 "
    "--logging_steps 1 --eval_generate 0 --save_steps 100 --lr_scheduler_type constant "
    "--warmup_ratio 0 --sft_steps 0"
).split()


needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed not installed (extra)"
)


def two_process_config(folder, name: str) -> pathlib.Path:
    """configs/<name>.yaml for two processes on this machine, with an absolute DeepSpeed JSON
    path; everything else as shipped."""
    config = folder / f"{name}.yaml"
    config.write_text(
        (ROOT / "configs" / f"{name}.yaml")
        .read_text()
        .replace(f"configs/ds_{name}.json", str(ROOT / "configs" / f"ds_{name}.json"))
        .replace("num_processes: 4", "num_processes: 2")
    )
    return config


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference run: one process, the same global batch (grad_accum 2)."""
    out = tmp_path_factory.mktemp("one")
    load_train_script().main([*COMMON, "--output_dir", str(out)])
    return out


#: accelerate's launcher from this interpreter's environment (not whatever is on PATH).
ACCELERATE_LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]


def free_port() -> str:
    """A TCP port nobody listens on now (the launchers' rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").open()]


def assert_two_processes_match(two, one):
    """`two` ran over two processes and gave `one`'s losses and gradient norms."""
    assert (two / "checkpoint-4" / "rng_rank1.pt").exists()  # really two processes
    a, b = ([r for r in metrics(out) if r.get("stage") != "sft"] for out in (one, two))
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-4)
    assert len({round(r["loss"], 6) for r in a}) > 1  # the steps really train
    # The reference pass was sharded, and its cache written once: one file, every record.
    files = list((two / "ref_cache").iterdir())
    assert len(files) == 1 and files[0].suffix == ".jsonl"
    assert len(files[0].read_text().splitlines()) == 40


def run(command, env, **kwargs):
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.parametrize("config", ["ddp", "zero2", "zero3"])
def test_accelerate_launch_two_processes_match_one_process(tmp_path, one_process, config):
    """configs/<config>.yaml as shipped but for two processes, on this GPU-less machine (gloo;
    DeepSpeed through its CPU accelerator): the single-process run's losses, gradient norms."""
    if config != "ddp" and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("DeepSpeed not installed (extra)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = tmp_path / config
    proc = run(
        [
            *ACCELERATE_LAUNCH,
            "--config_file",
            str(two_process_config(tmp_path, config)),
            "--main_process_port",
            free_port(),
            str(ROOT / "train.py"),
            *COMMON,
            "--save_steps",
            "4",
            "--output_dir",
            str(two),
        ],
        env,
    )
    assert "over 2 process(es)" in proc.stdout
    if config != "ddp":
        assert (two / "checkpoint-4" / "accelerate_state").is_dir()  # DeepSpeed's save_state
    assert_two_processes_match(two, one_process)


def test_torchrun_two_processes_match_one_process(tmp_path, one_process):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    launch = [*torchrun, "--nproc_per_node", "2", "--master_port", free_port()]
    two = tmp_path / "two"
    proc = run(
        [*launch, str(ROOT / "train.py"), *COMMON, "--output_dir", str(two), "--save_steps", "4"],
        env,
    )
    assert "over 2 process(es)" in proc.stdout
    assert_two_processes_match(two, one_process)


def test_global_batch_must_divide(tmp_path):
    with pytest.raises(
        ValueError, match=r"--global_batch_size 6 is not a multiple of --batch_size 4"
    ):
        load_train_script().main(
            ["--batch_size", "4", "--global_batch_size", "6", "--output_dir", str(tmp_path)]
        )


def test_liger_flag_needs_cuda(tmp_path):
    if sys.modules.get("torch") is not None and __import__("torch").cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match=r"--liger: Liger-Kernel.s patches run on CUDA only"):
        load_train_script().main(
            ["--liger", "--n_train", "8", "--heldout", "4", "--output_dir", str(tmp_path)]
        )


@needs_deepspeed
def test_deepspeed_zero3_lora_trains_and_its_checkpoint_evaluates(tmp_path):
    """ZeRO-3 with LoRA over two processes: the logits path, the reference pass after prepare, a
    checkpoint with weights.pt that `python -m symmpo.evaluate` reads."""
    config = two_process_config(tmp_path, "zero3")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "z3"
    args = (
        "--n_train 16 --heldout 4 --batch_size 4 --max_steps 2 --eval_generate 1 --lora "
        "--lora_r 4 --lora_alpha 8 --sft_steps 0"
    ).split()
    run(
        [
            *ACCELERATE_LAUNCH,
            "--config_file",
            str(config),
            "--main_process_port",
            free_port(),
            str(ROOT / "train.py"),
            *args,
            "--output_dir",
            str(out),
        ],
        env,
    )
    evaluated = run(
        [sys.executable, "-m", "symmpo.evaluate", "--checkpoint", str(out / "checkpoint-2")], env
    )
    # Outside DeepSpeed, the saved checkpoint scores as the run's own last evaluation did.
    saved = json.loads(evaluated.stdout)
    last = json.loads((out / "eval.jsonl").read_text().splitlines()[-1])
    assert saved["step"] == last["step"] == 2
    for key in ("logp_accuracy", "reward_accuracy", "reward_margin", "hallucination_rate"):
        assert saved[key] == pytest.approx(last[key], rel=1e-4, abs=1e-6), key


def test_two_processes_share_one_supervised_stage(tmp_path):
    """With a supervised stage, the main process trains and caches it and the other loads that
    cache (it may not train it: a missing cache raises there): one cache file, and the run's
    caption losses and preference losses are the single-process run's."""
    flags = [*COMMON, "--sft_steps", "3", "--save_steps", "4"]
    one = tmp_path / "one"
    load_train_script().main([*flags, "--output_dir", str(one)])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    launch = [*torchrun, "--nproc_per_node", "2", "--master_port", free_port()]
    two = tmp_path / "two"
    run([*launch, str(ROOT / "train.py"), *flags, "--output_dir", str(two)], env)
    assert len(list(two.glob("sft-*.pt"))) == 1
    sft = [
        [r["caption_loss"] for r in metrics(out) if r.get("stage") == "sft"] for out in (one, two)
    ]
    assert len(sft[0]) == 3 and sft[1] == pytest.approx(sft[0], rel=1e-6)
    assert_two_processes_match(two, one)
