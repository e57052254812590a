"""Helpers for kernel tests: poisoned allocations and error-vs-error comparisons."""

from __future__ import annotations

import contextlib

import torch


def _poison(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point():
        return t.fill_(float("nan"))
    if t.dtype == torch.bool:
        return t.fill_(True)
    return t.fill_(-12345)


@contextlib.contextmanager
def poisoned_allocations(monkeypatch):
    """Every torch.empty / empty_like inside the block returns NaN (or -12345) filled memory,
    so an element a kernel should write but does not shows up in the comparison."""
    real_empty, real_empty_like = torch.empty, torch.empty_like
    monkeypatch.setattr(torch, "empty", lambda *a, **k: _poison(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _poison(real_empty_like(*a, **k)))
    try:
        yield
    finally:
        monkeypatch.setattr(torch, "empty", real_empty)
        monkeypatch.setattr(torch, "empty_like", real_empty_like)


def assert_error_within(kernel, torch_low, exact, eps_scale=2.0**-8, slack=1.0):
    """Low precision: max|kernel - exact| <= slack * max|torch - exact| + eps * max|exact|."""
    exact = exact.double()
    kernel_err = (kernel.double() - exact).abs().max().item()
    torch_err = (torch_low.double() - exact).abs().max().item()
    bound = slack * torch_err + eps_scale * exact.abs().max().item() + 1e-12
    assert kernel_err <= bound, (
        f"kernel error {kernel_err:.3e} > bound {bound:.3e} (torch {torch_err:.3e})"
    )
