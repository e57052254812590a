"""Benchmarks import the library and the shared helpers beside this file."""

import gc
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _release_memory():
    """Each case starts with the device memory of the previous one returned."""
    yield
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
