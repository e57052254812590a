"""run.py, the README's two commands: which torch build it installs, and that it installs once."""

import importlib.util

import pytest
from train_script import ROOT


@pytest.fixture
def run(tmp_path, monkeypatch):
    """run.py loaded fresh, with its .venv in tmp_path and pip calls recorded, not made."""
    spec = importlib.util.spec_from_file_location("run_script", ROOT / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()  # an existing environment: no venv is created
    monkeypatch.setattr(module, "VENV", venv)
    monkeypatch.delenv("SYMMPO_TORCH_INDEX", raising=False)
    module.calls = []
    monkeypatch.setattr(module, "pip", lambda *args: module.calls.append(args))
    monkeypatch.setattr(module, "reachable", lambda url: True)
    return module


def torch_install(calls):
    return next(c for c in calls if c[0] == "torch==2.13.0")


def test_cpu_machine_gets_the_cpu_build(run, monkeypatch):
    monkeypatch.setattr(run, "has_nvidia_gpu", lambda: False)
    run.install("test", None)
    assert torch_install(run.calls) == ("torch==2.13.0", "--extra-index-url", run.CPU_INDEX)
    assert ("--no-build-isolation", "-e", ".[dev,deepspeed]") in run.calls


def test_gpu_machine_gets_pypis_cuda_build_or_the_index_asked_for(run, monkeypatch):
    monkeypatch.setattr(run, "has_nvidia_gpu", lambda: True)
    run.install("train", None)
    assert torch_install(run.calls) == ("torch==2.13.0",)
    assert ("--no-build-isolation", "-e", ".[train]") in run.calls
    run.calls.clear()
    cu128 = "https://download.pytorch.org/whl/cu128"
    run.install("test", cu128)
    assert torch_install(run.calls) == ("torch==2.13.0", "--extra-index-url", cu128)


def test_installs_once_per_setup_and_job(run, monkeypatch):
    monkeypatch.setattr(run, "has_nvidia_gpu", lambda: False)
    run.install("train", None)
    first = len(run.calls)
    run.install("train", None)
    assert len(run.calls) == first  # the stamp matches: nothing installed again
    run.install("test", None)
    assert len(run.calls) > first  # another job's extras
