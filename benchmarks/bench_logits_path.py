"""The logits path: fused Triton vs the eager reference vs torch.compile of it.

    python -m pytest benchmarks/bench_logits_path.py               # CUDA: all three, N = 2k..64k
    SYMMPO_BENCH_TINY=1 python -m pytest benchmarks/bench_logits_path.py     # seconds-long smoke

(`python benchmarks/bench_logits_path.py [pytest options]` runs the same.) The results table
is printed at the end of the run; the rows go to the results CSV (results_csv.py).

Shapes: B = 4 examples (20 sequences), V = 32064, every position after the first a target, so
N = 20 (T - 1). Modes: forward (loss with the graph kept), backward (given the forward),
full (forward + backward), reference (scoring reference logits, no gradient), and for the
Triton path full_unchecked: full without reading the kernels' validation flags, the one host
sync of symmpo_loss (with gradients it sits in the backward, right before its kernel's launch),
to measure what that sync costs a step. Bytes counted for GB/s (2-byte logits): forward N V 2,
backward 2 N V 2 (read once, write the gradient once), full 3 N V 2, reference N V 2: the
floor of docs/math.md#hardware-floor. Peak memory is what a call allocates beyond its inputs
(the logits gradient included in backward/full).

Environment: SYMMPO_BENCH_N (CUDA sizes, e.g. 8000,64000), SYMMPO_BENCH_COMPILE_N (the sizes
at which torch.compile runs), SYMMPO_BENCH_TINY=1 (one tiny size; with TRITON_INTERPRET=1 the
Triton path too, under Triton's interpreter).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
from measure import median_ms, peak_extra_mb, run_pytest_benchmark
from results_csv import environment, make_row, write_rows

from symmpo import SymMPOConfig, reference, symmpo_loss
from symmpo.implementations import fused_symmpo, score_reference

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
TINY = os.environ.get("SYMMPO_BENCH_TINY") == "1"
BATCH = 4
VOCAB = 1000 if TINY else 32064
DTYPE = torch.bfloat16 if CUDA else torch.float32
if TINY:
    N_POSITIONS = [40]
elif CUDA:
    N_POSITIONS = [
        int(n) for n in os.environ.get("SYMMPO_BENCH_N", "2000,8000,16000,32000,64000").split(",")
    ]
else:
    N_POSITIONS = [200, 800]
if CUDA:
    PROVIDERS = ["symmpo_triton", "eager", "torch_compile"]
elif TINY and os.environ.get("TRITON_INTERPRET") == "1":
    PROVIDERS = ["symmpo_triton", "eager"]  # the fused path under Triton's interpreter
else:
    PROVIDERS = ["eager"]
MODES = ["forward", "backward", "full", "full_unchecked", "reference"]
BYTES_PER_ELEMENT = {"forward": 2, "backward": 4, "full": 6, "full_unchecked": 6, "reference": 2}
CONFIG = SymMPOConfig()


#: N values at which torch.compile runs (each shape compiles anew): all unless restricted.
COMPILE_N = os.environ.get("SYMMPO_BENCH_COMPILE_N")


def eager_loss(logits, labels, ref_logps, sequence_logps=reference.sequence_logps):
    """The eager objective without input checks: log_softmax in float32, gather, terms."""
    policy = sequence_logps(logits, labels)
    return reference.symmpo_terms(policy.view(5, -1), ref_logps.view(5, -1), CONFIG).loss.mean()


_compiled_sequence_logps = None


def _compiled():
    """torch.compile of the reference's logits path (static shapes: with dynamic=True,
    Inductor in torch 2.11 failed an assertion in tiling_utils on this graph's backward)."""
    global _compiled_sequence_logps
    if _compiled_sequence_logps is None:
        # Every (N, grad mode) pair is a recompile: past Dynamo's limit (8) it would silently
        # run the eager function instead, and the rows would time eager as torch_compile.
        # (recompile_limit / fail_on_recompile_limit_hit from torch 2.7, cache_size_limit /
        # fail_on_cache_limit_hit before.)
        config = torch._dynamo.config
        limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, limit, max(getattr(config, limit), 64))
        for fail in ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit"):
            if hasattr(config, fail):
                setattr(config, fail, True)
                break
        _compiled_sequence_logps = torch.compile(reference.sequence_logps, dynamic=False)
    return _compiled_sequence_logps


def make_inputs(n_positions: int, vocab: int = VOCAB, dtype=DTYPE, seed: int = 0):
    rows = 5 * BATCH
    seq_len = n_positions // rows + 1
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    logits = torch.randn(rows, seq_len, vocab, device=DEVICE, dtype=dtype, generator=gen)
    labels = torch.randint(0, vocab, (rows, seq_len), device=DEVICE, generator=gen)
    labels[:, 0] = -100
    ref_logps = -torch.rand(rows, device=DEVICE, generator=gen) * seq_len * 10
    return logits, labels, ref_logps


def loss_fn(provider):
    if provider == "symmpo_triton":
        return lambda x, y, r: symmpo_loss(x, y, r, config=CONFIG, impl="triton").loss
    if provider == "eager":
        return eager_loss
    return lambda x, y, r: eager_loss(x, y, r, sequence_logps=_compiled())


def unchecked_loss(logits, labels, ref_logps):
    """symmpo_loss's Triton path without its flag read (no host sync): benchmarks only."""
    return fused_symmpo(logits, labels, ref_logps, CONFIG, inplace_grad=False).mean_loss


def reference_fn(provider):
    if provider == "symmpo_triton":
        return lambda x, y: score_reference(x, y, False, -100, "triton")
    if provider == "eager":
        return lambda x, y: reference.sequence_logps(x, y)
    return _compiled()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("n_positions", N_POSITIONS)
def test_logits_path(benchmark, n_positions, provider, mode):
    if mode == "full_unchecked" and provider != "symmpo_triton":
        pytest.skip("full_unchecked: the Triton path's flag read only")
    if provider == "torch_compile" and COMPILE_N and str(n_positions) not in COMPILE_N.split(","):
        pytest.skip(f"torch.compile not run at N = {n_positions} (SYMMPO_BENCH_COMPILE_N)")
    logits, labels, ref_logps = make_inputs(n_positions)
    n_targets = int((labels[:, 1:] != -100).sum())
    grad_to_none = None
    if mode == "reference":
        score = reference_fn(provider)

        def step():
            with torch.no_grad():
                return score(logits, labels)
    else:
        logits.requires_grad_(True)
        grad_to_none = [logits]
        compute = loss_fn(provider)
        if mode == "forward":
            step = lambda: compute(logits, labels, ref_logps)  # noqa: E731
        elif mode in ("full", "full_unchecked"):
            if mode == "full_unchecked":
                compute = unchecked_loss

            def step():
                compute(logits, labels, ref_logps).backward()
                return logits.grad
        else:
            loss = compute(logits, labels, ref_logps)

            def step():
                loss.backward(retain_graph=True)
                return logits.grad

    ms = median_ms(step, DEVICE, grad_to_none=grad_to_none)
    if grad_to_none:
        logits.grad = None
    peak = peak_extra_mb(step, DEVICE)
    run_pytest_benchmark(benchmark, step, DEVICE, rounds=1 if CUDA else 2)
    if grad_to_none:
        logits.grad = None

    element = logits.element_size()
    gbytes = BYTES_PER_ELEMENT[mode] * n_targets * VOCAB * element / 2 / 1e9
    env = environment()
    common = ("logits_path", provider, mode, n_targets, VOCAB, 0, DTYPE)
    rows = [make_row(*common, "ms", ms, env), make_row(*common, "gbps", gbytes / (ms / 1e3), env)]
    if peak is not None:
        rows.append(make_row(*common, "peak_mem_mb", peak, env))
    write_rows(rows)
    benchmark.extra_info.update({"median_ms": ms, "gbps": gbytes / (ms / 1e3), "peak_mb": peak})


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, *sys.argv[1:]]))
