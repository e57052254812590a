"""The logits path: fused Triton vs the eager reference vs torch.compile of it.

    python -m pytest benchmarks/bench_logits_path.py       # CUDA: training-shaped + all-targets
    SYMMPO_BENCH_TINY=1 python -m pytest benchmarks/bench_logits_path.py     # seconds-long smoke

(`python benchmarks/bench_logits_path.py [pytest options]` runs the same.) The results table
is printed at the end of the run; the rows go to the results CSV (results_csv.py).

Two kinds of case, each its own op in the rows (n_positions: N, the number of target
positions):

- op ``logits_path``, training-shaped (training_case): B examples, 5B sequences of 600 to
  1000 positions, each with 100 to 300 targets at its end (the answer; the image and prompt
  positions before it carry -100), right-padded to the longest with -100, so the logits are
  (5B, T, V) with T the longest length. B = N / 1000 (200 targets a sequence on average: 20
  sequences hold 2,000 to 6,000 targets, so N = 8k and 16k take B = 8 and 16), the lengths
  and target counts drawn from a seeded generator (the same case on every machine). CUDA:
  N = 2000, 4000, 8000, 16000 and V = 32064 (LLaVA-1.5), 128256 (Llama 3), 151936 (Qwen2).
- op ``logits_path_all_targets``: the earlier case, every position after the first a target
  (N = 20 (T - 1), B = 4), CUDA N = 64000, V = 32064.

Modes: forward (loss with the graph kept), backward (given the forward), full (forward +
backward), reference (scoring reference logits, no gradient), and for the Triton path
full_unchecked: full without reading the kernels' validation flags (fused_symmpo directly),
to measure what that read costs a step, and on CUDA full_graph: full captured once in a CUDA
graph and replayed (the step's device time without Python's launch cost, as a caller that
captures its step runs it; at small N the launched step is bound by the host:
host_overhead.py --cuda splits the two).

The floor (docs/math.md#hardware-floor), bytes that must move, with N the target positions, P
all positions of the logits tensor (5B T: prompt, image and padding positions included) and e
the element size: forward and reference N V e (read the target rows), backward N V e + P V e
(read them again, write the whole gradient: its zeros at non-target rows are written too),
full, full_unchecked and full_graph 2 N V e + P V e. No provider here avoids the zeros (symmpo_loss
returns a dense (5B, T, V) gradient; inplace_grad writes them into the logits buffer); only a
design whose caller never reads the non-target rows could, like the fused-linear path that
never materialises the logits (bench_fused_linear.py). Metrics per row: ms (median), gbps (the
floor's bytes over the time), floor_ms (the floor's bytes at the copy bandwidth measured in
the same run by copy_bandwidth_gbps: a device-to-device copy of a 1 GiB buffer, its bytes read
and written counted), floor_fraction (floor_ms / ms: 1 is at the floor), and on CUDA
peak_mem_mb, what a call allocates beyond its inputs (the logits gradient included in
backward/full).

GPU time: sized for about two minutes on an H200 by default (an estimate, not yet timed on
the card). For that, eager and torch.compile run all modes at the first vocabulary and only
full at the others, torch.compile only at SYMMPO_BENCH_COMPILE_N (default 8000 and 64000, at
V = 32064: every shape compiles anew), and eager and torch.compile are skipped where their
float32 temporaries would not fit in the free device memory (about 16 bytes a logit,
estimate_eager_bytes: N = 16000 at V = 128256 and 151936 on an H200).

Environment: SYMMPO_BENCH_N (training-shaped N, e.g. 2000,8000), SYMMPO_BENCH_V (their
vocabularies), SYMMPO_BENCH_ALL_TARGETS_N (all-targets N; empty: none), SYMMPO_BENCH_COMPILE_N
(the N at which torch.compile runs, at SYMMPO_BENCH_COMPILE_V, default 32064),
SYMMPO_BENCH_TINY=1 (one tiny case of each kind; with TRITON_INTERPRET=1 the Triton path too,
under Triton's interpreter).
"""

from __future__ import annotations

import dataclasses
import os
import random
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
DTYPE = torch.bfloat16 if CUDA else torch.float32
CONFIG = SymMPOConfig()

#: A training sequence: positions (image + prompt + answer) and targets (the answer's tokens).
TRAINING_LENGTHS = (600, 1000)
TRAINING_TARGETS = (100, 300)
#: The tiny smoke's: Triton's interpreter costs milliseconds a position.
TINY_LENGTHS = (4, 8)
TINY_TARGETS = (1, 3)


def _env_ints(name: str, default: str) -> list[int]:
    return [int(n) for n in os.environ.get(name, default).split(",") if n.strip()]


if TINY:
    TRAINING_N, VOCABS, ALL_TARGETS_N = [10], [1000], [20]
elif CUDA:
    TRAINING_N = _env_ints("SYMMPO_BENCH_N", "2000,4000,8000,16000")
    VOCABS = _env_ints("SYMMPO_BENCH_V", "32064,128256,151936")
    ALL_TARGETS_N = _env_ints("SYMMPO_BENCH_ALL_TARGETS_N", "64000")
else:
    TRAINING_N, VOCABS, ALL_TARGETS_N = [2000], [32064], [200, 800]
ALL_TARGETS_VOCAB = 1000 if TINY else 32064
if CUDA:
    PROVIDERS = ["symmpo_triton", "eager", "torch_compile"]
elif TINY and os.environ.get("TRITON_INTERPRET") == "1":
    PROVIDERS = ["symmpo_triton", "eager"]  # the fused path under Triton's interpreter
else:
    PROVIDERS = ["eager"]
MODES = ["forward", "backward", "full", "full_unchecked", "full_graph", "reference"]
#: SYMMPO_BENCH_PROVIDERS: a comma-separated subset of PROVIDERS (default: all).
if os.environ.get("SYMMPO_BENCH_PROVIDERS"):
    PROVIDERS = [p for p in PROVIDERS if p in os.environ["SYMMPO_BENCH_PROVIDERS"].split(",")]
#: N and V at which torch.compile runs (each shape compiles anew).
COMPILE_N = _env_ints("SYMMPO_BENCH_COMPILE_N", "8000,64000")
COMPILE_V = _env_ints("SYMMPO_BENCH_COMPILE_V", "32064")


@dataclasses.dataclass(frozen=True)
class TrainingCase:
    """Per-sequence lengths and target counts of a training-shaped batch (kind-major, 5B)."""

    lengths: tuple[int, ...]
    targets: tuple[int, ...]

    @property
    def batch(self) -> int:
        return len(self.lengths) // 5

    @property
    def n_targets(self) -> int:
        return sum(self.targets)

    @property
    def seq_len(self) -> int:
        """T of the padded (5B, T) layout: the longest sequence."""
        return max(self.lengths)

    @property
    def n_positions(self) -> int:
        """All positions of the (5B, T, V) logits, padding included: the gradient's rows."""
        return len(self.lengths) * self.seq_len


def training_case(
    n_targets: int,
    lengths: tuple[int, int] = TRAINING_LENGTHS,
    targets: tuple[int, int] = TRAINING_TARGETS,
    seed: int = 0,
) -> TrainingCase:
    """5B sequences with ``n_targets`` targets in all: B = n_targets / (5 x the mean of the
    ``targets`` range), rounded; each sequence's target count in ``targets`` and its length in
    ``lengths`` (at least its targets + 1: the first position predicts nothing), both ranges
    inclusive. Seeded (Python's random, from ``seed`` and ``n_targets``): the same case
    everywhere."""
    low, high = targets
    batch = max(1, round(n_targets / (5 * (low + high) / 2)))
    sequences = 5 * batch
    if not sequences * low <= n_targets <= sequences * high:
        raise ValueError(f"{n_targets} targets do not fit {sequences} sequences of {targets}")
    rng = random.Random(seed * 1_000_003 + n_targets)
    counts = [rng.randint(low, high) for _ in range(sequences)]
    missing = n_targets - sum(counts)
    while missing:  # one target at a time, to sequences with room: stays within the range
        step = 1 if missing > 0 else -1
        room = [i for i, c in enumerate(counts) if low <= c + step <= high]
        counts[rng.choice(room)] += step
        missing -= step
    sizes = [rng.randint(max(lengths[0], c + 1), lengths[1]) for c in counts]
    return TrainingCase(tuple(sizes), tuple(counts))


def make_training_inputs(case: TrainingCase, vocab: int, dtype=DTYPE, device=DEVICE, seed=0):
    """(logits (5B, T, V), labels (5B, T), ref_logps (5B,)) of ``case``: sequence i's last
    ``targets[i]`` positions (of ``lengths[i]``) carry labels, every other position -100 (the
    image and prompt before them, the padding after), so logits positions
    lengths[i] - targets[i] - 1 .. lengths[i] - 2 are its targets."""
    gen = torch.Generator(device=device).manual_seed(seed)
    rows, seq_len = len(case.lengths), case.seq_len
    logits = torch.randn(rows, seq_len, vocab, device=device, dtype=dtype, generator=gen)
    tokens = torch.randint(0, vocab, (rows, seq_len), device=device, generator=gen)
    position = torch.arange(seq_len, device=device)
    end = torch.tensor(case.lengths, device=device)[:, None]
    start = end - torch.tensor(case.targets, device=device)[:, None]
    labels = torch.where((position >= start) & (position < end), tokens, -100)
    scale = torch.tensor(case.targets, device=device, dtype=torch.float32) * 10
    ref_logps = -torch.rand(rows, device=device, generator=gen) * scale
    return logits, labels, ref_logps


def make_inputs(n_positions: int, vocab: int = ALL_TARGETS_VOCAB, dtype=DTYPE, seed: int = 0):
    """The all-targets case: B = 4, 20 sequences of T = N / 20 + 1, every position after the
    first a target."""
    rows = 20
    seq_len = n_positions // rows + 1
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    logits = torch.randn(rows, seq_len, vocab, device=DEVICE, dtype=dtype, generator=gen)
    labels = torch.randint(0, vocab, (rows, seq_len), device=DEVICE, generator=gen)
    labels[:, 0] = -100
    ref_logps = -torch.rand(rows, device=DEVICE, generator=gen) * seq_len * 10
    return logits, labels, ref_logps


def floor_bytes(mode: str, n_targets: int, n_positions: int, vocab: int, element: int) -> int:
    """Bytes a step of ``mode`` must move: the target rows read once a pass (forward,
    backward), the whole (n_positions, V) gradient written once, zeros included."""
    read = n_targets * vocab * element
    write = n_positions * vocab * element
    passes = {"forward": 1, "reference": 1, "backward": 1}
    passes.update(full=2, full_unchecked=2, full_graph=2)
    return passes[mode] * read + (0 if mode in ("forward", "reference") else write)


def floor_metrics(floor: int, ms: float, bandwidth_gbps: float) -> dict[str, float]:
    """gbps (floor bytes over the time), floor_ms (the bytes at ``bandwidth_gbps``) and
    floor_fraction (floor_ms / ms)."""
    floor_ms = floor / (bandwidth_gbps * 1e9) * 1e3
    return {"gbps": floor / 1e9 / (ms / 1e3), "floor_ms": floor_ms, "floor_fraction": floor_ms / ms}


_bandwidth: list[float] = []


def copy_bandwidth_gbps() -> float:
    """GB/s of one device-to-device copy (bytes read + written), measured once a process."""
    if not _bandwidth:
        size = 2**30 if CUDA else 2**22 if TINY else 2**28
        src = torch.ones(size // 4, dtype=torch.float32, device=DEVICE)
        dst = torch.empty_like(src)
        ms = median_ms(lambda: dst.copy_(src), DEVICE)
        _bandwidth.append(2 * size / 1e9 / (ms / 1e3))
        del src, dst
    return _bandwidth[0]


def estimate_eager_bytes(n_positions: int, vocab: int, element: int) -> int:
    """Device memory of an eager (or compiled) step: the logits, their gradient and float32
    temporaries (measured: 12 bytes a logit beyond the bf16 inputs at V = 32064), rounded up."""
    return n_positions * vocab * (2 * element + 12)


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


def captured_step(compute, logits, labels, ref_logps):
    """Forward + backward of ``compute`` captured in a CUDA graph (after a warm-up on a side
    stream, as torch.cuda.graph wants): returns the graph's replay, which rewrites
    ``logits.grad`` in place."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        compute(logits, labels, ref_logps).backward()
    torch.cuda.current_stream().wait_stream(stream)
    logits.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        compute(logits, labels, ref_logps).backward()
    return graph.replay


def _cases():
    """(op, N, V) of every case, as pytest parameters."""
    cases = [("logits_path", n, v) for v in VOCABS for n in TRAINING_N]
    cases += [("logits_path_all_targets", n, ALL_TARGETS_VOCAB) for n in ALL_TARGETS_N]
    return [pytest.param(c, id=f"{c[0]}-N{c[1]}-V{c[2]}") for c in cases]


def _skip_reason(op, n, vocab, provider, mode, n_positions) -> str | None:
    if mode == "full_unchecked" and provider != "symmpo_triton":
        return "full_unchecked: the Triton path's flag read only"
    if mode == "full_graph" and (provider != "symmpo_triton" or not CUDA):
        return "full_graph: the Triton path on CUDA only"
    if provider == "symmpo_triton":
        return None
    if provider == "torch_compile" and (n not in COMPILE_N or vocab not in COMPILE_V):
        return f"torch.compile not run at N = {n}, V = {vocab} (SYMMPO_BENCH_COMPILE_N/_V)"
    if CUDA and op == "logits_path" and vocab != VOCABS[0] and mode != "full":
        return f"{provider}: full only at V = {vocab} (the GPU run's time)"
    if CUDA:
        free = torch.cuda.mem_get_info()[0]
        need = estimate_eager_bytes(n_positions, vocab, torch.finfo(DTYPE).bits // 8)
        if need > 0.9 * free:
            return f"{provider} needs about {need / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free"
    return None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", _cases())
def test_logits_path(benchmark, case, provider, mode):
    op, n, vocab = case
    if op == "logits_path":
        shape = training_case(n, *((TINY_LENGTHS, TINY_TARGETS) if TINY else ()))
        n_positions = shape.n_positions
    else:
        shape, n_positions = None, 20 * (n // 20 + 1)
    reason = _skip_reason(op, n, vocab, provider, mode, n_positions)
    if reason:
        pytest.skip(reason)
    if shape is not None:
        logits, labels, ref_logps = make_training_inputs(shape, vocab)
    else:
        logits, labels, ref_logps = make_inputs(n, vocab)
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
        elif mode == "full_graph":
            step, grad_to_none = captured_step(compute, logits, labels, ref_logps), None
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

    bandwidth = copy_bandwidth_gbps()
    ms = median_ms(step, DEVICE, grad_to_none=grad_to_none, cpu_reps=2 if TINY else 5)
    if grad_to_none:
        logits.grad = None
    # A replay allocates nothing (the graph holds its memory): full's row gives the step's peak.
    peak = None if mode == "full_graph" else peak_extra_mb(step, DEVICE)
    run_pytest_benchmark(benchmark, step, DEVICE, rounds=1 if CUDA or TINY else 2)
    if grad_to_none:
        logits.grad = None

    positions = logits.shape[0] * logits.shape[1]
    floor = floor_bytes(mode, n_targets, positions, vocab, logits.element_size())
    metrics = {"ms": ms, **floor_metrics(floor, ms, bandwidth)}
    if peak is not None:
        metrics["peak_mem_mb"] = peak
    env = environment()
    common = (op, provider, mode, n_targets, vocab, 0, DTYPE)
    write_rows([make_row(*common, metric, value, env) for metric, value in metrics.items()])
    benchmark.extra_info.update({**metrics, "copy_gbps": bandwidth})


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, *sys.argv[1:]]))
