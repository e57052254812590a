"""Launch settings shared by the kernels: one pinned block-size rule, and where kernels can run."""

from __future__ import annotations

import os

import torch
import triton

#: GPU (BLOCK_V, num_warps) per kernel, measured on an H100 at N = 32000 bf16 positions and
#: V = 32064 (benchmarks/tune_logits_blocks.py; rows in benchmarks/results/results.csv): the
#: forward kernel reached 3045 GB/s at (4096, 4) against 1772 at (32768, 16), the backward
#: 2942-2950 GB/s at (8192, 8) or (16384, 16) against 2217 at (32768, 16). Small blocks keep
#: several programs per multiprocessor in flight, which hides the loads' latency.
GPU_CONFIG = {"forward": (4096, 4), "backward": (8192, 8)}
#: The interpreter costs about a millisecond per loop iteration: take whole rows.
MAX_BLOCK_V_INTERPRETER = 1 << 17


def interpreter_enabled() -> bool:
    """True when Triton runs kernels through its NumPy interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_launchable(tensor: torch.Tensor) -> None:
    """Kernels run on CUDA tensors, or on CPU tensors under the interpreter; else say so."""
    if tensor.is_cuda:
        return
    if tensor.device.type == "cpu" and interpreter_enabled():
        return
    raise RuntimeError(
        f"symmpo's Triton kernels need a CUDA tensor, or TRITON_INTERPRET=1 set before "
        f"symmpo_kernels is imported to run them on the CPU; got a tensor on {tensor.device}. "
        f"Use impl='torch' on this device."
    )


def block_config(
    vocab: int,
    device: torch.device,
    block_v: int | None = None,
    num_warps: int | None = None,
    kernel: str = "forward",
) -> tuple[int, int]:
    """(BLOCK_V, num_warps) for rows of ``vocab`` elements of ``kernel`` ("forward" or
    "backward"); the arguments force either (tests, tuning runs)."""
    if device.type == "cuda":
        default_block, default_warps = GPU_CONFIG[kernel]
    else:
        default_block, default_warps = MAX_BLOCK_V_INTERPRETER, 4
    if block_v is None:
        block_v = min(triton.next_power_of_2(vocab), default_block)
    if block_v & (block_v - 1):
        raise ValueError(f"block_v must be a power of two, got {block_v}")
    if num_warps is None:
        num_warps = default_warps if block_v >= 1024 else 4
    return block_v, num_warps


def wide_rows(*tensors: torch.Tensor) -> bool:
    """Whether offsets inside a row (vocab x the last stride) of any tensor reach 2^31, so the
    kernels must compute them in int64 (a vocabulary that is not the innermost dimension)."""
    *tensors, vocab = tensors
    return any(vocab * t.stride(-1) >= 2**31 for t in tensors)


def guard_inplace_backward(ctx) -> None:
    """Refuse a second backward through a function whose first backward overwrote its saved
    logits with their gradient (``inplace_grad``): it would silently read the gradient."""
    if getattr(ctx, "inplace_grad", False):
        if getattr(ctx, "logits_consumed", False):
            raise RuntimeError(
                "backward ran twice through a Triton loss with inplace_grad=True: the first "
                "backward overwrote the logits with their gradient; recompute the loss (or pass "
                "inplace_grad=False) to backpropagate again"
            )
        ctx.logits_consumed = True
