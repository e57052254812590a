"""torch.ops.symmpo.fused_loss on the CPU (Triton interpreted): opcheck, the custom-op route
against the autograd Function route, and a fullgraph torch.compile step (tests/custom_ops_cases.py).

They run in a fresh Python process: inside this suite's process, after the other test modules'
imports, the op dispatcher running the interpreted kernels crashed (a segfault seen in CI), while
the same cases pass in a process of their own."""

import os
import pathlib
import subprocess
import sys

CASES = pathlib.Path(__file__).with_name("custom_ops_cases.py")


def test_custom_op_cases_in_a_process_of_their_own():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=CASES.parent)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
