"""Set up a virtual environment and run the trainer or the tests: the README's two commands.

    python run.py train [train.py flags]    # .venv with the `train` extra, then python train.py
    python run.py test [pytest flags]       # .venv with the `dev` extras, then python -m pytest -q

Needs only Python >= 3.10. The environment lives in `.venv/` and is reused: a second call
installs nothing unless setup.py changed. torch is installed first, and which build is chosen:

- no NVIDIA GPU (no `nvidia-smi` that lists one): the CPU build, from PyTorch's CPU index
  (download.pytorch.org/whl/cpu), about 200 MB instead of several GB of CUDA libraries;
- an NVIDIA GPU: PyPI's default torch for Linux, a CUDA build;
- `--torch-index URL` (before `train`/`test`) or the environment variable SYMMPO_TORCH_INDEX
  picks an index of your own, e.g. https://download.pytorch.org/whl/cu128 for CUDA 12.8.

pip's own configuration (a mirror, a wheel folder) still applies: it is read as usual.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import urllib.request
import venv

ROOT = pathlib.Path(__file__).resolve().parent
VENV = ROOT / ".venv"
TORCH = "torch==2.13.0"  # inside setup.py's range; the release the test suite is run with
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
EXTRAS = {"train": "train", "test": "dev,deepspeed"}


def has_nvidia_gpu() -> bool:
    """An NVIDIA driver that lists at least one GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10):
            return True
    except OSError:
        return False


def venv_python() -> pathlib.Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def pip(*args: str) -> None:
    subprocess.run([str(venv_python()), "-m", "pip", "install", "--quiet", *args], check=True)


def install(job: str, torch_index: str | None) -> None:
    """Create .venv if needed and install torch and the job's extras, once per setup.py."""
    if not venv_python().exists():
        print(f"run.py: creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
        pip("--upgrade", "pip")
    extras = EXTRAS[job]
    stamp = VENV / f".symmpo-{job}"
    wanted = hashlib.sha256((ROOT / "setup.py").read_bytes() + extras.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted:
        return
    gpu = has_nvidia_gpu()
    index = torch_index or os.environ.get("SYMMPO_TORCH_INDEX") or (None if gpu else CPU_INDEX)
    if index == CPU_INDEX and not reachable(CPU_INDEX + "/torch/"):
        print(f"run.py: {CPU_INDEX} is unreachable: torch comes from pip's configured sources")
        index = None
    build = f"from {index}" if index else "from pip's default sources"
    print(f"run.py: installing {TORCH} {build}, then symmpo[{extras}]", flush=True)
    # An extra index, not a replacement: pip also keeps its configured sources, and the CPU
    # build's version (2.13.0+cpu) ranks above PyPI's 2.13.0 for the same requirement.
    pip(TORCH, *(["--extra-index-url", index] if index else []))
    pip("setuptools", "wheel")
    # DeepSpeed's source package imports torch while it builds: build against the torch above
    # (an isolated build environment would fetch another torch).
    pip("--no-build-isolation", "-e", f".[{extras}]")
    stamp.write_text(wanted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--torch-index", help="pip index URL to take torch from")
    parser.add_argument("job", choices=sorted(EXTRAS), help="train: python train.py; test: pytest")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="passed on to train.py / pytest")
    args = parser.parse_args(argv)
    try:
        install(args.job, args.torch_index)
    except subprocess.CalledProcessError as error:
        parser.exit(1, f"run.py: installing failed ({' '.join(error.cmd[3:])}): see pip above\n")
    command = ["train.py"] if args.job == "train" else ["-m", "pytest", "-q"]
    return subprocess.run([str(venv_python()), *command, *args.rest], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
