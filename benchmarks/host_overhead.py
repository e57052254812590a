"""The host's share of a ``symmpo_loss`` step: everything but the kernels.

    python benchmarks/host_overhead.py            # both routes, forward and forward + backward
    python benchmarks/host_overhead.py --cuda     # on a GPU: host, device and eager step times

At small N a fused step can be bound by the host (Python, autograd, op dispatch) rather than
by the GPU: the GPU works for about 0.2 ms at the floor of a training-shaped step with 2,000
targets (V = 32064, H200), so every 100 microseconds of host time matter there. This script
replaces the three kernel launchers with functions that only allocate their outputs and times
what is left, on the CPU, for the two routes of the Triton path:

- ``function``: the autograd Function (``FusedSymMPOLoss``), what eager calls take;
- ``custom_op``: ``torch.ops.symmpo.fused_loss`` and its backward op, what ``torch.compile``
  sees (forced here outside compilation).

The times are this machine's (a GPU's host is usually faster) and exclude the kernel launches
themselves (a few microseconds each with Triton's launcher). Prints microseconds a call.

``--cuda`` splits a real step on the GPU instead (the training-shaped logits case of
bench_logits_path.py, V = 32064, N = 2000, 4000, 8000 targets; forward + backward):

- host: microseconds of host time a step, timed on the host while a sleep kernel keeps the
  GPU busy (so the host never waits for it);
- graph: the step captured once in a CUDA graph and replayed (device time, no launch gaps);
- eager: the step as bench_logits_path.py times it (do_bench, launches from Python);
- queued: the time the step adds when its launches follow the model's GPU work, as in
  training (a bf16 8192^3 matmul and the step, less the matmul alone);
- the top of a cProfile of the host's work and the kernels' own times (torch.profiler).

When eager is near host and far above graph, the step is bound by the host.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

if "--cuda" not in sys.argv:  # the stubbed run imports the kernels on a machine without a GPU
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def stub_kernels() -> None:
    """Launchers that allocate what the real ones return and launch nothing."""
    from symmpo_kernels import custom_ops, fused_loss, symmpo_terms

    def forward(logits, labels, ignore_index, bad_labels=None, zeroed=None, **_):
        sums, counts = zeroed
        return (
            sums,
            counts,
            logits.new_empty(logits.shape[0] * logits.shape[1], dtype=torch.float32),
        )

    def terms(sums, ref_logps, weights, flags=None, **_):
        batch = sums.shape[1]
        new = lambda *shape: sums.new_empty(shape)  # noqa: E731
        shapes = [(5, batch), (batch,), (4, batch), (3, batch), (5, batch), (5, batch), (16,), ()]
        return symmpo_terms.TermsResult(*(new(*s) for s in shapes), flags=flags)

    def backward(logits, *_, before_launch=None, **__):
        if before_launch is not None:
            before_launch()
        return torch.empty_like(logits)

    fused_loss.logprobs_forward, fused_loss.terms_and_summary = forward, terms
    fused_loss.logprobs_backward = custom_ops.logprobs_backward = backward


def time_calls(step, calls: int = 2000) -> float:
    """Microseconds a call of ``step``, after a warm-up."""
    for _ in range(100):
        step()
    start = time.perf_counter()
    for _ in range(calls):
        step()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    from symmpo import symmpo_loss

    stub_kernels()
    batch, seq_len, vocab = 4, 8, 16  # the shapes do not matter: nothing is computed
    logits = torch.randn(5 * batch, seq_len, vocab, requires_grad=True)
    labels = torch.randint(0, vocab, (5 * batch, seq_len))
    labels[:, :3] = -100
    ref = torch.randn(5 * batch)

    def forward():
        return symmpo_loss(logits, labels, ref, impl="triton")

    def full():
        forward().loss.backward()

    is_compiling = torch.compiler.is_compiling
    print(f"host time a call, kernels stubbed ({os.cpu_count()} CPUs, torch {torch.__version__})")
    for route in ("function", "custom_op"):
        # The custom-op route is taken under torch.compile; pretend to be compiling.
        torch.compiler.is_compiling = (lambda: True) if route == "custom_op" else is_compiling
        fwd, both = time_calls(forward), time_calls(full)
        print(f"{route:10s} forward {fwd:6.0f} us   forward + backward {both:6.0f} us")
    torch.compiler.is_compiling = is_compiling


def cuda_anatomy(n_targets=(2000, 4000, 8000), vocab: int = 32064) -> None:
    """Host time, CUDA-graph replay and eager time of the fused step (see the module doc)."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    from bench_logits_path import make_training_inputs, training_case

    print(f"fused step on {torch.cuda.get_device_name()} (torch {torch.__version__}), V={vocab}")
    print(f"{'N':>6} {'host us':>8} {'graph ms':>9} {'eager ms':>9} {'queued ms':>10}")
    for n in n_targets:
        logits, labels, ref = make_training_inputs(training_case(n), vocab)
        _anatomy_case(logits.requires_grad_(True), labels, ref, n, profile=n == n_targets[0])
        del logits
        torch.cuda.empty_cache()


def _anatomy_case(x, labels, ref, n, profile):
    """One row of cuda_anatomy's table (and, with ``profile``, the host's and kernels' times)."""
    import cProfile
    import pstats

    from bench_logits_path import captured_step  # benchmarks/ is on the path (cuda_anatomy)
    from measure import median_ms

    from symmpo import symmpo_loss

    def loss(logits, labels, ref):
        return symmpo_loss(logits, labels, ref).loss

    def step():
        x.grad = None
        loss(x, labels, ref).backward()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    calls = 50
    torch.cuda._sleep(2_000_000_000)  # about a second of GPU work ahead of the launches
    start = time.perf_counter()
    for _ in range(calls):
        step()
    host_us = (time.perf_counter() - start) / calls * 1e6
    torch.cuda.synchronize()
    device = x.device
    eager_ms = median_ms(step, device)
    replay = captured_step(loss, x, labels, ref)
    graph_ms = median_ms(replay, device)
    del replay
    # As in training: the step's launches queue behind the model's GPU work (here one bf16
    # 8192^3 matmul, about 1.6 ms on an H200), so its host time overlaps that work.
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    matmul_ms = median_ms(lambda: a @ a, device)

    def behind_matmul():
        a @ a
        step()

    both_ms = median_ms(behind_matmul, device)
    queued_ms = both_ms - matmul_ms
    times = f"{graph_ms:>9.4f} {eager_ms:>9.4f} {queued_ms:>10.4f}"
    print(f"{n:>6} {host_us:>8.0f} {times}   (the matmul alone: {matmul_ms:.4f} ms)", flush=True)
    if profile:
        host_profile = cProfile.Profile()
        host_profile.enable()
        for _ in range(200):
            step()
        host_profile.disable()
        torch.cuda.synchronize()
        pstats.Stats(host_profile, stream=sys.stdout).sort_stats("tottime").print_stats(25)
        with torch.profiler.profile() as prof:
            for _ in range(10):
                step()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12))


if __name__ == "__main__":
    if "--cuda" in sys.argv:
        cuda_anatomy()
    else:
        main()
