"""SymMPO from hidden states: this library's fused-linear path against the alternatives.

    python -m pytest benchmarks/bench_fused_linear.py         # CUDA: LLaVA-1.5-7B shapes
    SYMMPO_BENCH_TINY=1 python -m pytest benchmarks/bench_fused_linear.py    # seconds-long smoke

(`python benchmarks/bench_fused_linear.py [pytest options]` runs the same.) The results table
is printed at the end of the run; the rows go to the results CSV (results_csv.py).

One forward + backward per provider on identical tensors (fused_linear_cases.py): hidden
(5B, T, H), lm_head (V, H), the last R positions of each sequence targets. CUDA shapes:
H = 4096, V = 32064, B = 8, T = 800, R = 200 (P = 8000 targets), bf16.

Equal work: by default every provider scores the same P target rows. symmpo_fused_linear takes
the whole hidden (its chunks hold the targets only) and the labels on the host, as a data
loader yields them (it plans its chunks there, so its step makes no host sync); eager,
logits_path, liger_fused_linear_dpo and cce take the hidden rows of the target positions,
gathered inside the timed step (an index_select, and in the backward the add of their gradient
into the zeroed (5B, T, H) hidden gradient that symmpo writes too), from an index built
beforehand as a collator would (fused_linear_cases.target_rows; padding and its cost are
described there: none at these shapes, every sequence having R targets). The
``*_all_positions`` providers (eager, logits_path, liger_fused_linear_dpo) are the earlier
calls on the whole hidden, logits at all 5B T positions: separate rows, same P in the
n_positions column.

Metrics: median ms, TFLOP/s counted as 6 P H V useful FLOPs (for every provider, the
all-positions ones included; docs/math.md#hardware-floor), and peak memory beyond the inputs
and their gradients (MiB). A bf16 matmul of the same M, N, K (torch.mm) gives the rate
measured in the same run. On the CPU (fp32, torch paths): 10 x 1024 positions, R = 200,
H = 256, V = 32064, and peak resident memory from a fresh process (cpu_memory.py).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
from fused_linear_cases import PROVIDERS, make_inputs, target_rows, useful_flops
from measure import median_ms, peak_extra_mb, run_pytest_benchmark
from results_csv import environment, make_row, write_rows

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
TINY = os.environ.get("SYMMPO_BENCH_TINY") == "1"
if TINY:
    SHAPE = dict(batch=1, seq_len=64, hidden=32, vocab=1000, targets=20)
elif CUDA:
    SHAPE = dict(batch=8, seq_len=800, hidden=4096, vocab=32064, targets=200)
else:
    SHAPE = dict(batch=2, seq_len=1024, hidden=256, vocab=32064, targets=200)
DTYPE = torch.bfloat16 if CUDA else torch.float32
if CUDA:
    NAMES = ["symmpo_fused_linear", "eager", "logits_path", "liger_fused_linear_dpo", "cce"]
    NAMES += ["eager_all_positions", "logits_path_all_positions"]
    NAMES += ["liger_fused_linear_dpo_all_positions"]
elif TINY:
    NAMES = ["symmpo_fused_linear", "eager", "liger_fused_linear_dpo"]
else:
    NAMES = ["symmpo_fused_linear", "eager", "eager_all_positions"]


def _rows(provider, ms, peak, n_targets):
    env = environment()
    common = ("fused_linear", provider, "full", n_targets, SHAPE["vocab"], SHAPE["hidden"], DTYPE)
    tflops = useful_flops(n_targets, SHAPE["hidden"], SHAPE["vocab"]) / (ms / 1e3) / 1e12
    rows = [make_row(*common, "ms", ms, env), make_row(*common, "tflops", tflops, env)]
    if peak is not None:
        rows.append(make_row(*common, "peak_mem_mb", peak, env))
    return rows, tflops


@pytest.mark.parametrize("provider", NAMES)
def test_fused_linear(benchmark, provider):
    if provider.startswith("liger_fused_linear_dpo"):
        pytest.importorskip("liger_kernel")
    if provider == "cce":
        pytest.importorskip("cut_cross_entropy")
    h, w, labels, ref = make_inputs(**SHAPE, dtype=DTYPE, device=DEVICE)
    n_targets = int((labels[:, 1:] != -100).sum())
    compute = PROVIDERS[provider]
    rows = target_rows(labels)  # the collator's part: not timed

    def step():
        compute(h, w, labels, ref, rows=rows).backward()

    ms = median_ms(step, DEVICE, grad_to_none=[h, w], cpu_reps=3)
    h.grad = w.grad = None
    grad_mb = (h.numel() * h.element_size() + w.numel() * w.element_size()) / 2**20
    peak = peak_extra_mb(step, DEVICE)
    if peak is not None:
        peak -= grad_mb  # beyond the inputs and their gradients
    elif not TINY:
        from cpu_memory import measure

        peak = measure(provider, SHAPE)  # resident, gradients included
    h.grad = w.grad = None
    run_pytest_benchmark(benchmark, step, DEVICE, rounds=1)
    rows, tflops = _rows(provider, ms, peak, n_targets)
    write_rows(rows)
    benchmark.extra_info.update({"median_ms": ms, "tflops": tflops, "peak_mb": peak})


@pytest.mark.skipif(not CUDA, reason="the matmul rate is measured on the GPU")
def test_matmul_rate(benchmark):
    """bf16 (P x H) @ (H x V): the rate the fused path's 6 P H V FLOPs are held against."""
    n = 5 * SHAPE["batch"] * SHAPE["targets"]
    a = torch.randn(n, SHAPE["hidden"], device=DEVICE, dtype=DTYPE)
    b = torch.randn(SHAPE["hidden"], SHAPE["vocab"], device=DEVICE, dtype=DTYPE)
    ms = median_ms(lambda: a @ b, DEVICE)
    run_pytest_benchmark(benchmark, lambda: a @ b, DEVICE, rounds=1)
    tflops = 2.0 * n * SHAPE["hidden"] * SHAPE["vocab"] / (ms / 1e3) / 1e12
    env = environment()
    common = ("fused_linear", "torch_mm", "matmul", n, SHAPE["vocab"], SHAPE["hidden"], DTYPE)
    write_rows([make_row(*common, "ms", ms, env), make_row(*common, "tflops", tflops, env)])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, *sys.argv[1:]]))
