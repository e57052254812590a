"""accelerate and DeepSpeed set-up: one process, DDP, ZeRO-2 or ZeRO-3, on GPUs or CPUs.

``make_accelerator(args)`` returns an ``Accelerator`` for however the script was launched
(``python``, ``accelerate launch --config_file configs/...``, ``torchrun``) and fixes the batch
arithmetic: ``--global_batch_size`` = ``--batch_size`` x processes x ``--grad_accum`` examples
per optimizer step, so the same flags give the same optimisation at any process count.
"""

from __future__ import annotations

import os

import torch

from .cli import UsageError


def cpu_only() -> bool:
    """No accelerator of any kind (CUDA, XPU, NPU, ...) is visible to torch."""
    if hasattr(torch, "accelerator"):  # torch >= 2.6
        return not torch.accelerator.is_available()
    return not torch.cuda.is_available()


def make_accelerator(args):
    """The run's Accelerator; sets ``args.grad_accum`` from ``--global_batch_size`` (UsageError
    if it does not divide) and, under ZeRO-3, ``args.logits_path`` (lm_head.weight is
    partitioned; its forward gathers it)."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedDataParallelKwargs

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and cpu_only():
        # Several processes without GPUs: accelerate would pick no backend and count one process
        # in each, so each would train alone. DeepSpeed (its CPU accelerator) gets gloo named;
        # data parallelism becomes accelerate's CPU mode (gloo).
        if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
            from deepspeed.accelerator import get_accelerator

            if get_accelerator().device_name() == "cpu":
                PartialState(backend="gloo")
        else:
            os.environ["ACCELERATE_USE_CPU"] = "1"
    report_to = getattr(args, "report_to", "none")
    accelerator = Accelerator(
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        log_with=None if report_to == "none" else report_to,  # --report_to's tracker
        project_dir=args.output_dir,
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))  # accelerate fills it in for mpirun
    if accelerator.num_processes != launched:
        raise RuntimeError(
            f"{launched} processes were launched (WORLD_SIZE) but accelerate counts "
            f"{accelerator.num_processes}: each process would train alone; check the launcher "
            "and the accelerate config"
        )
    world = accelerator.num_processes
    if args.global_batch_size:
        if args.global_batch_size % (args.batch_size * world):
            raise UsageError(
                f"--global_batch_size {args.global_batch_size} is not a multiple of "
                f"--batch_size {args.batch_size} x {world} process(es); allowed: multiples of "
                f"{args.batch_size * world}"
            )
        args.grad_accum = args.global_batch_size // (args.batch_size * world)
    accelerator.gradient_accumulation_steps = args.grad_accum
    deepspeed = accelerator.state.deepspeed_plugin
    if deepspeed is not None:  # no dataloader goes through prepare: give DeepSpeed the sizes
        deepspeed.deepspeed_config.update(
            train_micro_batch_size_per_gpu=args.batch_size,
            train_batch_size=args.batch_size * world * args.grad_accum,
            gradient_accumulation_steps=args.grad_accum,
            gradient_clipping=args.max_grad_norm,
        )
        if deepspeed.zero_stage == 3:
            args.logits_path = True
            if args.ref == "model":
                raise UsageError(
                    "--ref model keeps an unpartitioned copy, which ZeRO-3 cannot gather; "
                    "allowed under ZeRO-3: --ref precompute, or --lora --ref lora"
                )
    return accelerator


def fill_deepspeed_sizes(accelerator, model) -> None:
    """The ZeRO bucket sizes a config leaves "auto", from the model's hidden size (what
    accelerate would read off model.config if a dataloader went through prepare)."""
    deepspeed = accelerator.state.deepspeed_plugin
    if deepspeed is None:
        return
    hidden = model.config.text_config.hidden_size
    zero = deepspeed.deepspeed_config.setdefault("zero_optimization", {})
    sizes = {
        "reduce_bucket_size": hidden * hidden,
        "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
        "stage3_param_persistence_threshold": 10 * hidden,
    }
    for key, value in sizes.items():
        if zero.get(key) == "auto":
            zero[key] = value
