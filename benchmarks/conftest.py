"""Benchmarks import the library and the shared helpers beside this file.

`pytest benchmarks` collects the bench_*.py files (pytest's own pattern is test_*.py), and every
run ends with a table of the rows the benches wrote (results_csv.SESSION_ROWS), printed without
-s, under pytest-benchmark's own table when that is enabled.
"""

import gc
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import results_csv  # noqa: E402
from summarize import format_table  # noqa: E402


def pytest_collect_file(file_path, parent):
    """bench_*.py files here are test modules (given by name, pytest collects them anyway)."""
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_terminal_summary(terminalreporter):
    """The rows the benches of this run recorded: one table per op and device."""
    if not results_csv.SESSION_ROWS:
        return
    terminalreporter.section("symmpo benchmark results")
    for line in format_table(results_csv.SESSION_ROWS):
        terminalreporter.write_line(line)
    paths = ", ".join(str(p) for p in results_csv.SESSION_PATHS)
    terminalreporter.write_line(f"rows written to {paths}")


@pytest.fixture(autouse=True)
def _release_memory():
    """Each case starts with the device memory of the previous one returned."""
    yield
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
