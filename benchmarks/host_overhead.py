"""The host's share of a ``symmpo_loss`` step: everything but the kernels.

    python benchmarks/host_overhead.py            # both routes, forward and forward + backward

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
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

os.environ.setdefault("TRITON_INTERPRET", "1")  # kernels may import on a machine without a GPU
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


if __name__ == "__main__":
    main()
