"""Two CPU processes (accelerate launch, gloo) train exactly like one with the same global batch."""

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMON = ["--n_train", "32", "--heldout", "8", "--batch_size", "4", "--global_batch_size", "8",
          "--max_steps", "4", "--logging_steps", "1", "--eval_generate", "0", "--save_steps",
          "100", "--lr_scheduler_type", "constant", "--warmup_ratio", "0"]  # fmt: skip


needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed not installed (extra)"
)


def one_cpu_process_config(folder, name: str) -> pathlib.Path:
    """configs/<name>.yaml rewritten for one CPU process (accelerate cannot start several
    DeepSpeed processes on a machine without GPUs), with an absolute DeepSpeed JSON path."""
    config = folder / f"{name}.yaml"
    config.write_text(
        (ROOT / "configs" / f"{name}.yaml").read_text()
        .replace(f"configs/ds_{name}.json", str(ROOT / "configs" / f"ds_{name}.json"))
        .replace("num_processes: 4", "num_processes: 1").replace("use_cpu: false", "use_cpu: true")
    )  # fmt: skip
    return config


def metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").open()]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torch's launcher")
def test_two_processes_match_one_process(tmp_path):
    # torchrun with accelerate's CPU switch: two gloo processes (accelerate launch --cpu starts
    # a single process on a machine without GPUs).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    launch = ["torchrun", "--nproc_per_node", "2", "--master_port", "29517"]
    two = tmp_path / "two"
    proc = subprocess.run([*launch, str(ROOT / "train.py"), *COMMON, "--output_dir", str(two),
                           "--save_steps", "4"], cwd=ROOT, env=env, capture_output=True,
                          text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "over 2 process(es)" in proc.stdout
    assert (two / "checkpoint-4" / "rng_rank1.pt").exists()  # really two processes

    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    one = tmp_path / "one"
    train.main([*COMMON, "--output_dir", str(one)])  # one process: grad_accum 2

    a, b = metrics(one), metrics(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-4)
    assert len({round(r["loss"], 6) for r in a}) > 1  # the steps really train

    # The reference pass was sharded, and its cache written once: one file, every record.
    files = list((two / "ref_cache").iterdir())
    assert len(files) == 1 and files[0].suffix == ".jsonl"
    assert len(files[0].read_text().splitlines()) == 40


def test_global_batch_must_divide(tmp_path):
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    with pytest.raises(
        ValueError, match=r"--global_batch_size 6 is not a multiple of --batch_size 4"
    ):
        train.main(["--batch_size", "4", "--global_batch_size", "6", "--output_dir", str(tmp_path)])


def test_liger_flag_needs_cuda(tmp_path):
    if sys.modules.get("torch") is not None and __import__("torch").cuda.is_available():
        pytest.skip("CUDA present")
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    with pytest.raises(RuntimeError, match=r"--liger .* need a CUDA device"):
        train.main(["--liger", "--n_train", "8", "--heldout", "4", "--output_dir", str(tmp_path)])


@needs_deepspeed
def test_deepspeed_zero2_single_process_matches_plain(tmp_path):
    """ZeRO-2 through accelerate (one CPU process: accelerate cannot start several DeepSpeed
    processes on the CPU) gives the plain run's losses; checkpoints go through save_state."""
    config = one_cpu_process_config(tmp_path, "zero2")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    args = [*COMMON, "--save_steps", "2"]
    ds = tmp_path / "ds"
    proc = subprocess.run(["accelerate", "launch", "--config_file", str(config),
                           str(ROOT / "train.py"), *args, "--output_dir", str(ds)],
                          cwd=ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    plain = tmp_path / "plain"
    subprocess.run([sys.executable, str(ROOT / "train.py"), *args, "--output_dir", str(plain)],
                   cwd=ROOT, env=env, check=True, capture_output=True)  # fmt: skip
    for x, y in zip(metrics(plain), metrics(ds), strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
    assert (ds / "checkpoint-4" / "accelerate_state").is_dir()


@needs_deepspeed
def test_deepspeed_zero3_lora_trains_and_its_checkpoint_evaluates(tmp_path):
    """ZeRO-3 with LoRA (one CPU process): the logits path, the reference pass after prepare,
    a checkpoint with weights.pt that `python -m symmpo.evaluate` reads."""
    config = one_cpu_process_config(tmp_path, "zero3")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = tmp_path / "z3"
    args = ["--n_train", "16", "--heldout", "4", "--batch_size", "4", "--max_steps", "2",
            "--eval_generate", "1", "--lora", "--lora_r", "4", "--lora_alpha", "8"]  # fmt: skip
    launch = ["accelerate", "launch", "--config_file", str(config), str(ROOT / "train.py")]
    proc = subprocess.run([*launch, *args, "--output_dir", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    evaluated = subprocess.run([sys.executable, "-m", "symmpo.evaluate", "--checkpoint",
                                str(out / "checkpoint-2")], cwd=ROOT, env=env,
                               capture_output=True, text=True)  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-4000:]
    assert "logp_accuracy" in evaluated.stdout
