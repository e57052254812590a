"""Where a training step's peak memory goes: the live allocations at the peak, by source line.

    python benchmarks/memory_breakdown.py --response 150 --providers shared_varlen,shared [--liger]

Runs bench_end_to_end.py's step (the 7B-shaped LLaVA with LoRA r = 128, B = 4, bf16 autocast;
a tiny shape without CUDA, where nothing is recorded) under the CUDA allocator's history, then
replays the trace: the moment the allocations made during the step sum highest, and the
tensors alive then, grouped by the innermost frame in transformers, peft, liger or symmpo
(with the innermost frame's function beside it). The weights and adapters, allocated before,
are outside the trace; the AdamW state is inside it (the step makes its optimizer, whose first
step allocates it: the `_init_group` line). It writes no benchmark rows (the steps run under
the allocator's recording).
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
# Steps timed under recording are no benchmark: their rows go to a scratch file.
os.environ["SYMMPO_RESULTS_CSV"] = "/tmp/symmpo_memory_breakdown.csv"
import bench_end_to_end as e2e  # noqa: E402
from summarize import format_table  # noqa: E402

from symmpo.train.model import add_lora, patch_with_liger  # noqa: E402
from symmpo.train.shared_varlen import use_varlen_attention  # noqa: E402

PROJECT_FRAMES = ("transformers", "peft", "liger_kernel", "symmpo", "kernels", "bench_")


def live_at_peak(events: list[dict]) -> tuple[int, list[dict]]:
    """Replay allocator events: the highest sum of traced allocations and the blocks alive then."""
    live: dict[int, dict] = {}
    total = peak = 0
    at_peak: list[dict] = []
    for event in events:
        if event["action"] == "alloc":
            live[event["addr"]] = event
            total += event["size"]
            if total > peak:
                peak, at_peak = total, list(live.values())
        elif event["action"] in ("free_requested", "free_completed") and event["addr"] in live:
            total -= live.pop(event["addr"])["size"]
    return peak, at_peak


def source(frames: list[dict]) -> str:
    """'file:line function' of the innermost project frame, and the innermost function."""
    inner = frames[0]["name"] if frames else "?"
    for frame in frames:
        path = frame["filename"]
        if any(part in path for part in PROJECT_FRAMES):
            tail = "/".join(pathlib.Path(path).parts[-2:])
            return f"{tail}:{frame['line']} {frame['name']} <- {inner}"
    return f"(no project frame) <- {inner}"


def report(provider: str, response_length: int, policy, top: int) -> None:
    torch.cuda.empty_cache()
    torch.cuda.memory._record_memory_history(max_entries=2_000_000, stacks="python")
    if provider == "shared_varlen":
        use_varlen_attention(policy.get_base_model())
    try:
        rows = e2e.run_step(policy, response_length, provider)
    finally:
        policy.get_base_model().set_attn_implementation({"text_config": "sdpa"})
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
    peak, blocks = live_at_peak(snapshot["device_traces"][torch.cuda.current_device()])
    groups: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for block in blocks:
        group = groups[source(block.get("frames", []))]
        group[0] += block["size"]
        group[1] += 1
    allocated = torch.cuda.max_memory_allocated() / 2**20
    traced = f"traced peak {peak / 2**20:.0f} MiB in {len(blocks)} blocks"
    allocated = f"max_memory_allocated {allocated:.0f} MiB"
    print("\n" + "\n".join(format_table(rows)))
    print(f"== {provider} R={response_length}: {traced} ({allocated})")
    for key, (size, count) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"{size / 2**20:9.1f} MiB {count:5d}x  {key}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--response", type=int, default=150)
    parser.add_argument("--providers", default="shared_varlen,shared")
    parser.add_argument("--liger", action="store_true", help="also measure with Liger's patches")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    rank = 4 if e2e.TINY else 128
    policy = add_lora(e2e.build_model(), r=rank, alpha=2 * rank, dropout=0.0)
    policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy.train()
    providers = args.providers.split(",")
    if not torch.cuda.is_available():
        for provider in providers:
            print("\n".join(format_table(e2e.run_step(policy, args.response, provider))))
        print("no CUDA: steps ran, nothing recorded")
        return
    for provider in providers:
        report(provider, args.response, policy, args.top)
    if args.liger:
        patch_with_liger(policy)
        for provider in providers:
            print("\n(with Liger's RMSNorm, SwiGLU and RoPE)")
            report(provider, args.response, policy, args.top)


if __name__ == "__main__":
    main()
