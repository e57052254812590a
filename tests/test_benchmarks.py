"""The benchmark files stay runnable: a tiny CPU run writes well-formed CSV rows and prints them
as a table, run either way benchmarks/README.md documents."""

import csv
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_csv import COLUMNS, make_row, read_rows, write_rows  # noqa: E402


def _run(args, tmp_path, triton_interpret="1"):
    """Run ``python ARGS`` from the repository root as a tiny CPU smoke run, rows to tmp_path."""
    out = tmp_path / "results.csv"
    env = {**os.environ, "SYMMPO_BENCH_TINY": "1", "SYMMPO_RESULTS_CSV": str(out)}
    env["TRITON_INTERPRET"] = triton_interpret
    proc = subprocess.run(
        [sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def _run_bench(name, tmp_path):
    """`python -m pytest benchmarks/NAME`: rows in the CSV, and the same rows printed."""
    cmd = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable"]
    out, stdout = _run([*cmd, str(ROOT / "benchmarks" / name)], tmp_path)
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == COLUMNS
    _assert_table_printed(stdout, rows)
    return rows


def _assert_table_printed(stdout, rows):
    """The run ends with a table per op: a title naming the op and the card, a header, and a
    line per (mode, size, provider) row holding its median ms."""
    assert "symmpo benchmark results" in stdout, stdout[-3000:]
    lines = stdout.splitlines()
    for op in {r["op"] for r in rows}:
        title = next(i for i, line in enumerate(lines) if line.startswith(f"{op} on cpu"))
        header = lines[title + 1].split()
        assert header[0] == "mode" and header[2] == "provider" and "ms" in header, header
        table = [line.split() for line in lines[title + 2 :]]
        for r in rows:
            if r["op"] == op and r["metric"] == "ms":
                cells = [r["mode"], r["n_positions"], r["provider"]]
                assert any(line[:3] == cells for line in table), (cells, stdout[-3000:])


def test_logits_path_benchmark_runs(tmp_path):
    rows = _run_bench("bench_logits_path.py", tmp_path)
    providers = {r["provider"] for r in rows}
    assert providers == {"eager", "symmpo_triton"}
    modes = {"forward", "backward", "full", "full_unchecked", "reference"}
    assert {r["mode"] for r in rows} == modes
    assert {r["provider"] for r in rows if r["mode"] == "full_unchecked"} == {"symmpo_triton"}
    assert all(float(r["value"]) > 0 for r in rows if r["metric"] == "ms")


def test_bench_run_as_a_script_prints_its_table(tmp_path):
    """`SYMMPO_BENCH_TINY=1 python benchmarks/bench_logits_path.py`, as benchmarks/README.md
    documents it: the pytest run of the file, its exit status and its results table."""
    out, stdout = _run(["benchmarks/bench_logits_path.py"], tmp_path, triton_interpret="0")
    rows = read_rows(out)
    assert {r["provider"] for r in rows} == {"eager"}
    assert "passed" in stdout
    _assert_table_printed(stdout, rows)


def test_benchmarks_folder_collects_every_bench_once():
    """`python -m pytest benchmarks` (the smoke command) collects each bench_*.py file once."""
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    for args in (["benchmarks"], ["benchmarks", "benchmarks/bench_fused_linear.py"]):
        env = {**os.environ, "SYMMPO_BENCH_TINY": "1"}
        proc = subprocess.run([*cmd, *args], env=env, cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        ids = [line for line in proc.stdout.splitlines() if "::" in line]
        assert len(ids) == len(set(ids)), ids
        files = {line.split("::")[0] for line in ids}
        benches = {f"benchmarks/{p.name}" for p in (ROOT / "benchmarks").glob("bench_*.py")}
        assert files == benches


def test_results_csv_deduplicates_by_key(tmp_path):
    path = tmp_path / "r.csv"
    env = {"device": "d", "torch": "t", "triton": "x", "date": "2026-01-01"}
    write_rows([make_row("op", "p", "full", 10, 7, 0, "bfloat16", "ms", 1.0, env)], path)
    second = [
        make_row("op", "p", "full", n, 7, 0, "bfloat16", "ms", v, env)
        for n, v in ((10, 2.0), (20, 3.0))
    ]
    write_rows(second, path)
    rows = read_rows(path)
    assert [(r["n_positions"], float(r["value"])) for r in rows] == [("10", 2.0), ("20", 3.0)]


@pytest.mark.skipif(sys.platform != "linux", reason="bash script")
def test_device_check_script_is_valid_bash():
    proc = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "device_check.sh")])
    assert proc.returncode == 0


def test_fused_linear_benchmark_runs(tmp_path):
    rows = _run_bench("bench_fused_linear.py", tmp_path)
    providers = {"symmpo_fused_linear", "eager", "liger_fused_linear_dpo"}
    assert {r["provider"] for r in rows} == providers
    assert {r["metric"] for r in rows} == {"ms", "tflops"}


def test_cpu_memory_probe_separates_the_paths():
    """At a shape with a full vocabulary the probe sees eager's (5B, T, V) float32 tensors."""
    from cpu_memory import measure

    shape = dict(batch=1, seq_len=256, hidden=64, vocab=32064, targets=50)
    eager, fused = measure("eager_all_positions", shape), measure("symmpo_fused_linear", shape)
    assert eager > 3 * fused, (eager, fused)
    assert eager > 300  # at least two 164 MB (5 x 256 x 32064 float32) tensors


def test_end_to_end_benchmark_runs_and_plots(tmp_path, monkeypatch):
    """The tiny CPU run: every LoRA provider but Liger's (CUDA only) in mode train_step, the
    released recipe and `--forward shared` also in mode full_finetune; every case with its time,
    tokens/s and (Linux: the process's resident set) peak, resident and step memory, step memory
    being peak minus resident; the plot draws the CSV."""
    # One thread: the tiny steps gain nothing from more, and on a busy machine OpenMP's waiting
    # threads made the run up to twice as slow (30 s against 70 s).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rows = _run_bench("bench_end_to_end.py", tmp_path)
    lora = {"released_recipe", "released_online_ref", "naive", "shared", "shared_varlen"}
    assert {r["provider"] for r in rows if r["mode"] == "train_step"} == lora
    full = {r["provider"] for r in rows if r["mode"] == "full_finetune"}
    assert full == {"released_recipe", "shared_varlen"}
    metrics = {"ms", "tokens_per_s"}
    if sys.platform == "linux":
        metrics |= {"peak_mem_mb", "resident_mem_mb", "step_mem_mb"}
    cases: dict[tuple, dict[str, float]] = {}
    for r in rows:
        cases.setdefault((r["mode"], r["provider"]), {})[r["metric"]] = float(r["value"])
    assert len(cases) == len(lora) + len(full)
    for case, values in cases.items():
        assert set(values) == metrics, case
        assert values["ms"] > 0 and values["tokens_per_s"] > 0, case
        if "step_mem_mb" in values:
            step = values["peak_mem_mb"] - values["resident_mem_mb"]
            assert values["step_mem_mb"] == pytest.approx(step, rel=1e-4, abs=0.01), case
            assert values["step_mem_mb"] >= 0, case
    from plot_end_to_end import main as plot

    out = plot(["--csv", str(tmp_path / "results.csv"), "--out", str(tmp_path / "p.png")])
    assert out.stat().st_size > 10_000


def test_host_overhead_times_both_routes(tmp_path):
    """`python benchmarks/host_overhead.py`: the stubbed launchers still match the kernels'
    interfaces (a renamed launcher or a changed result fails here), and both routes print a
    positive time for the forward and for forward + backward."""
    _, stdout = _run(["benchmarks/host_overhead.py"], tmp_path)
    lines = {line.split()[0]: line.split() for line in stdout.splitlines()[1:] if line.strip()}
    assert set(lines) == {"function", "custom_op"}, stdout
    for cells in lines.values():
        forward, full = float(cells[2]), float(cells[-2])
        assert 0 < forward < full, stdout
