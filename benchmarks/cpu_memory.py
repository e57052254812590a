"""Peak resident memory of one forward + backward on the CPU, each case in a fresh process.

    python benchmarks/cpu_memory.py                       # the issue's shape: 10 x 1024, V 32064
    python benchmarks/cpu_memory.py --provider eager --tiny

The child builds its inputs, resets the kernel's high-water mark (/proc/self/clear_refs), runs
the step and reports VmHWM - VmRSS-before: the extra memory of the step, gradients included.
A warm-up step on a tiny batch first keeps lazily loaded library code out of the figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys

SHAPE = dict(batch=2, seq_len=1024, hidden=256, vocab=32064, targets=200)
TINY = dict(batch=1, seq_len=64, hidden=32, vocab=1000, targets=20)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(provider: str, shape: dict) -> dict:
    import torch
    from fused_linear_cases import PROVIDERS, make_inputs

    torch.set_num_threads(2)
    # Warm up on a tiny batch so that lazily loaded library code is not counted as the step's.
    PROVIDERS[provider](*make_inputs(**TINY, dtype=torch.float32, device="cpu")).backward()
    h, w, labels, ref = make_inputs(**shape, dtype=torch.float32, device="cpu")
    gc.collect()
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    PROVIDERS[provider](h, w, labels, ref).backward()
    peak = _status_kb("VmHWM")
    return {"provider": provider, "peak_extra_mb": (peak - before) / 1024}


def measure(provider: str, shape: dict) -> float:
    """Peak extra MiB of ``provider`` at ``shape``, measured in a fresh Python process."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--provider",
        provider,
        "--shape",
        json.dumps(shape),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_extra_mb"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--provider", default=None)
    parser.add_argument("--shape", default=None)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    shape = json.loads(args.shape) if args.shape else (TINY if args.tiny else SHAPE)
    if args.child:
        print(json.dumps(child(args.provider, shape)))
    else:
        for name in [args.provider] if args.provider else ["eager", "symmpo_fused_linear"]:
            print(f"{name:<22} {measure(name, shape):10.1f} MiB")
