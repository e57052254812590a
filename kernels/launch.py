"""Launch settings shared by the kernels: one pinned block-size rule, and where kernels can run."""

from __future__ import annotations

import os

import torch
import triton

#: Largest vocabulary block a GPU program holds at once: 32768 covers LLaVA-1.5's 32064 in one
#: pass (64 KiB of bf16, 64 float32 registers a thread at 16 warps). Larger vocabularies loop.
MAX_BLOCK_V_GPU = 32768
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
    vocab: int, device: torch.device, block_v: int | None = None, num_warps: int | None = None
) -> tuple[int, int]:
    """(BLOCK_V, num_warps) for rows of ``vocab`` elements; the arguments force either.

    The environment variable SYMMPO_BLOCK_V overrides the GPU block (for tuning runs).
    """
    if block_v is None:
        limit = MAX_BLOCK_V_GPU if device.type == "cuda" else MAX_BLOCK_V_INTERPRETER
        limit = int(os.environ.get("SYMMPO_BLOCK_V", limit)) if device.type == "cuda" else limit
        block_v = min(triton.next_power_of_2(vocab), limit)
    if block_v & (block_v - 1):
        raise ValueError(f"block_v must be a power of two, got {block_v}")
    if num_warps is None:
        num_warps = 4 if block_v <= 2048 else 8 if block_v <= 8192 else 16
    return block_v, num_warps
