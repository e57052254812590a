"""SymMPO training of a LLaVA-1.5 model with this library's loss: a thin reference trainer.

    python train.py                                   # tiny default: CPU, minutes, no downloads
    python train.py --model_name_or_path llava-hf/llava-1.5-7b-hf --data symmpo_data/ \\
        --lora --output_dir out/llava-symmpo          # a real (already cached) checkpoint
    python train.py --resume --output_dir out/symmpo-tiny      # continue the latest checkpoint

One step: collate B examples into 5B kind-major sequences (each of the 2B distinct images encoded
once), one policy pass, the loss from the last hidden states at target positions
(symmpo_loss_from_hidden), AdamW. The reference log-probs are precomputed once with the
initial model and cached on disk (--ref precompute), or scored online (--ref lora / model).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import pathlib
import random
import resource
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from symmpo import SymMPOConfig
from symmpo.evaluate import evaluate_run, plot_curves
from symmpo.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from symmpo.train.collator import PreferenceCollator
from symmpo.train.data import BadRecord, load_records, records_from_rows, split_heldout
from symmpo.train.model import (
    LORA_PRESET,
    add_lora,
    apply_liger,
    build_policy,
    lora_inputs_uncast,
    num_image_tokens,
)
from symmpo.train.objectives import FORWARDS, LOSSES, compute_loss, score_batch
from symmpo.train.reference_cache import ReferenceCache, file_identity, fingerprint
from symmpo.train.shared_varlen import choose_shared_attention, use_varlen_attention

# ---------------------------------------------------------------------------------------------
# Settings. Defaults for a real model follow the released SymMPO scripts (beta 0.1, lambda 0.5,
# lr 5e-6 for full fine-tuning, warmup 0.05, weight decay 0.01, max length 2048). Their LoRA
# script's lr 5e-7 looks like a slip (a tenth of the full fine-tuning rate, where LoRA usually
# needs a higher one); --lora defaults to 2e-5 instead (see the README).
# ---------------------------------------------------------------------------------------------


def saved_shared_attention(out_dir: pathlib.Path) -> str | None:
    """The --shared_attention route of the latest checkpoint in out_dir (runs saved before the
    choice existed used the mask route), or None without a checkpoint or a shared forward."""
    checkpoints = list_checkpoints(out_dir)
    if not checkpoints:
        return None
    state = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    saved = state.get("args", {})
    if saved.get("forward") != "shared":
        return None
    return saved.get("shared_attention", "mask")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output_dir", default="out/symmpo-tiny")
    p.add_argument("--model_name_or_path", default=None, help="default: the tiny built-in LLaVA")
    p.add_argument("--data", default=None, help="parquet file/folder or .jsonl; default: embedded")
    p.add_argument("--loss", choices=LOSSES, default="symmpo")
    p.add_argument("--ref", choices=("precompute", "lora", "model"), default="precompute")
    p.add_argument(
        "--forward",
        choices=("naive", "shared"),
        default="naive",
        help="shared: each image + question prefix encoded once (2P + 5R tokens)",
    )
    p.add_argument(
        "--shared_attention",
        choices=("auto", "mask", "varlen"),
        default="auto",
        help="--forward shared: padded rows and a 4-D mask (sdpa), or one unpadded stream and "
        "variable-length attention (PyTorch's flash-attention kernels on CUDA); auto: varlen "
        "where those kernels run (CUDA sm80+, bf16), else mask",
    )
    p.add_argument("--logits_path", action="store_true", help="lm_head + symmpo_loss instead")
    p.add_argument("--max_steps", type=int, default=None, help="default: 1200 tiny, 1 epoch real")
    p.add_argument("--batch_size", type=int, default=None, help="examples per micro-batch")
    p.add_argument("--grad_accum", type=int, default=1, help="micro-batches per step and process")
    p.add_argument(
        "--global_batch_size",
        type=int,
        default=None,
        help="examples per optimizer step over all processes (sets --grad_accum)",
    )
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--lr_scheduler_type", choices=("cosine", "constant"), default="cosine")
    p.add_argument("--warmup_ratio", type=float, default=0.05)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--max_grad_norm", type=float, default=1.0)
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (peft)")
    p.add_argument("--lora_r", type=int, default=LORA_PRESET["r"])
    p.add_argument("--lora_alpha", type=int, default=LORA_PRESET["alpha"])
    p.add_argument("--lora_dropout", type=float, default=LORA_PRESET["dropout"])
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--beta_contrast", type=float, default=None)
    p.add_argument("--pair_weight", type=float, default=0.5, help="lambda")
    p.add_argument("--margin_weight", type=float, default=1e-4, help="gamma")
    p.add_argument("--anchor_weight", type=float, default=1.0, help="eta")
    p.add_argument("--delta", type=float, default=0.0)
    p.add_argument("--average_log_prob", action="store_true")
    p.add_argument("--max_length", type=int, default=2048)
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--no_bf16", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--liger", action="store_true", help="Liger-Kernel RMSNorm/SwiGLU/RoPE (CUDA)")
    p.add_argument("--eval_steps", type=int, default=None, help="evaluate every N steps")
    p.add_argument(
        "--eval_generate",
        type=int,
        default=16,
        help="embedded set: held-out questions answered greedily for the hallucination rate",
    )
    p.add_argument("--logging_steps", type=int, default=10)
    p.add_argument("--save_steps", type=int, default=50)
    p.add_argument("--save_total_limit", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--skip_bad_records", action="store_true")
    p.add_argument("--heldout", type=int, default=64, help="records set apart for evaluation")
    p.add_argument("--eval_batch_size", type=int, default=16)
    p.add_argument("--ref_cache_dir", default=None, help="default: <output_dir>/ref_cache")
    p.add_argument("--n_train", type=int, default=384, help="embedded set: training records")
    return p.parse_args(argv)


def cpu_only() -> bool:
    """No accelerator of any kind (CUDA, XPU, NPU, ...) is visible to torch."""
    if hasattr(torch, "accelerator"):  # torch >= 2.6
        return not torch.accelerator.is_available()
    return not torch.cuda.is_available()


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.data:  # stored in checkpoints: evaluate may run from another folder
        args.data = str(pathlib.Path(args.data).resolve())
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
    accelerator = Accelerator(
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)]
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))  # accelerate fills it in for mpirun
    if accelerator.num_processes != launched:
        raise RuntimeError(
            f"{launched} processes were launched (WORLD_SIZE) but accelerate counts "
            f"{accelerator.num_processes}: each process would train alone; check the launcher "
            "and the accelerate config"
        )
    # Global batch = batch_size x processes x grad_accum examples per optimizer step, whatever
    # the process count; --global_batch_size fixes it and derives --grad_accum.
    world = accelerator.num_processes
    if args.shared_attention != "auto" and args.forward != "shared":
        raise ValueError("--shared_attention chooses how --forward shared attends: add it")
    tiny = args.model_name_or_path is None
    args.batch_size = args.batch_size or (8 if tiny else 4)
    if args.global_batch_size:
        if args.global_batch_size % (args.batch_size * world):
            raise ValueError(
                f"--global_batch_size {args.global_batch_size} is not a multiple of "
                f"--batch_size {args.batch_size} x {world} processes"
            )
        args.grad_accum = args.global_batch_size // (args.batch_size * world)
    accelerator.gradient_accumulation_steps = args.grad_accum
    rank, is_main, device = (
        accelerator.process_index,
        accelerator.is_main_process,
        accelerator.device,
    )
    deepspeed = accelerator.state.deepspeed_plugin
    if deepspeed is not None:  # no dataloader goes through prepare: give DeepSpeed the sizes
        deepspeed.deepspeed_config.update(
            train_micro_batch_size_per_gpu=args.batch_size,
            train_batch_size=args.batch_size * world * args.grad_accum,
            gradient_accumulation_steps=args.grad_accum,
            gradient_clipping=args.max_grad_norm,
        )
        if deepspeed.zero_stage == 3:  # lm_head.weight is partitioned; its forward gathers it
            args.logits_path = True
    seed_everything(args.seed)
    args.max_steps = args.max_steps or (1200 if tiny else None)
    args.lr = args.lr or (1e-3 if tiny else 2e-5 if args.lora else 5e-6)
    out_dir = pathlib.Path(args.output_dir)
    if not args.resume and (list_checkpoints(out_dir) or (out_dir / "metrics.jsonl").exists()):
        raise FileExistsError(
            f"{out_dir} holds an earlier run (checkpoints or metrics.jsonl): pass --resume to "
            "continue it, or choose another --output_dir; nothing was overwritten"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    use_bf16 = device.type == "cuda" and not args.no_bf16
    forward = FORWARDS[args.forward]
    log = print if is_main else (lambda *a, **k: None)

    # -- model, tokenizer, image processor ----------------------------------------------------
    # bf16 weights only under LoRA (the frozen base); full fine-tuning keeps float32 weights
    # under bf16 autocast: AdamW steps of lr 5e-6 vanish below a bf16 weight's rounding.
    model, tokenizer, image_processor, model_identity = build_policy(
        args.model_name_or_path, args.seed, device, use_bf16 and args.lora, args.forward == "shared"
    )
    if deepspeed is not None:  # the "auto" sizes accelerate would read off model.config
        hidden = model.config.text_config.hidden_size
        zero = deepspeed.deepspeed_config.setdefault("zero_optimization", {})
        for key, value in (("reduce_bucket_size", hidden * hidden),
                           ("stage3_prefetch_bucket_size", int(0.9 * hidden * hidden)),
                           ("stage3_param_persistence_threshold", 10 * hidden)):  # fmt: skip
            if zero.get(key) == "auto":
                zero[key] = value
    if args.liger:
        apply_liger(model, device)
    if args.forward == "shared":  # stored resolved: the reference cache key and evaluate.py
        compute_dtype = torch.bfloat16 if use_bf16 else next(model.parameters()).dtype
        saved = saved_shared_attention(out_dir) if args.resume else None
        if args.shared_attention == "auto" and saved is not None:
            args.shared_attention = saved  # a resumed run keeps its route (and its cache)
        args.shared_attention = choose_shared_attention(
            args.shared_attention, model, device, compute_dtype
        )
        if saved is not None and args.shared_attention != saved:
            raise ValueError(
                f"--shared_attention {args.shared_attention}: the run in {out_dir} trained with "
                f"the {saved} route; resume it with --shared_attention {saved} (or auto)"
            )
        log(f"--forward shared attends with the {args.shared_attention} route")
        if args.shared_attention == "varlen":
            use_varlen_attention(model)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # -- data -----------------------------------------------------------------------------------
    if args.data is None:
        from symmpo.train.synthetic import synthetic_splits

        train_rows, heldout_rows = synthetic_splits(args.n_train, args.heldout, seed=args.seed)
        train_records, skipped = records_from_rows(train_rows, args.skip_bad_records)
        heldout_records, _ = records_from_rows(heldout_rows, args.skip_bad_records)
        data_identity = {"embedded": [args.n_train, args.heldout, args.seed]}
    else:
        records, skipped = load_records(args.data, args.skip_bad_records)
        train_records, heldout_records = split_heldout(records, args.heldout, args.seed)
        data_identity = {"data": file_identity(args.data)}
    collator = PreferenceCollator(
        tokenizer, image_processor, model.config.image_token_id, num_image_tokens(model.config),
        max_length=args.max_length, loss=args.loss, seed=args.seed,
    )  # fmt: skip
    seen: set = set()
    train_records, bad = check_records(train_records, collator, args.skip_bad_records, seen)
    heldout_records, bad_heldout = check_records(
        heldout_records, collator, args.skip_bad_records, seen
    )
    skipped += bad + bad_heldout
    if skipped:
        log(f"skipped {len(skipped)} bad record(s), first: {skipped[0]}")
    global_batch = args.batch_size * world * args.grad_accum
    if len(train_records) < global_batch:
        raise ValueError(
            f"{len(train_records)} usable training records < global batch {global_batch}"
        )
    args.max_steps = args.max_steps or len(train_records) // global_batch

    # -- reference ------------------------------------------------------------------------------
    config = SymMPOConfig(
        beta=args.beta, beta_contrast=args.beta_contrast, pair_weight=args.pair_weight,
        margin_weight=args.margin_weight, anchor_weight=args.anchor_weight, delta=args.delta,
        average_log_prob=args.average_log_prob,
    )  # fmt: skip
    ref_model = None
    if args.ref == "model" and deepspeed is not None and deepspeed.zero_stage == 3:
        raise ValueError("--ref model keeps an unpartitioned copy, which ZeRO-3 cannot gather: "
                         "use --ref precompute or --lora --ref lora")  # fmt: skip
    if args.ref == "model":
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    if args.lora:
        model = add_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout)
    elif args.ref == "lora":
        raise ValueError("--ref lora scores the reference with the adapters disabled: add --lora")

    def reference_logps(batch):
        if use_record_logps and cache is None and args.ref == "precompute":
            return batch["ref_logps"]
        if cache is not None:
            return cache.lookup(batch["idx"])
        with torch.no_grad(), autocast(device, use_bf16):
            if args.ref == "lora":
                with model.disable_adapter():
                    return score_batch(
                        model, batch, args.average_log_prob, forward, args.logits_path
                    )
            return score_batch(ref_model, batch, args.average_log_prob, forward, args.logits_path)

    # -- optimisation -----------------------------------------------------------------------------
    optimizer = torch.optim.AdamW(
        param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.999)
    )
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    warmup = math.ceil(args.warmup_ratio * args.max_steps)
    if args.lr_scheduler_type == "cosine":
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, args.max_steps)
    else:
        scheduler = get_constant_schedule_with_warmup(optimizer, warmup)
    # The step module goes through DDP's forward (gradient sync); the scheduler is stepped by hand
    # once per optimizer step (accelerate's wrapper would step it once per process).
    step_module, optimizer = accelerator.prepare(
        PolicyStep(model, args.loss, config, args.logits_path, forward), optimizer
    )

    # The reference pass comes after prepare (under ZeRO-3 the parameters are only gathered by
    # the engine's hooks) and before any optimizer step: it scores the initial model.
    cache = None
    # The released logps column holds sums: usable as the reference unless averaging.
    all_have_logps = all(r.ref_logps is not None for r in train_records + heldout_records)
    use_record_logps = all_have_logps and args.loss != "mdpo" and not args.average_log_prob
    if args.ref == "precompute" and not use_record_logps:
        key = fingerprint(
            model=model_identity, data=data_identity, template=collator.template.version,
            max_length=args.max_length, loss=args.loss, average=args.average_log_prob,
            seed=args.seed if args.loss == "mdpo" else None, bf16=use_bf16,
            forward=args.forward,
            shared_attention=args.shared_attention if args.forward == "shared" else None,
            logits_path=args.logits_path, liger=args.liger,
            weights=str(next(model.parameters()).dtype),  # DeepSpeed's bf16 casts them
        )  # fmt: skip
        cache = ReferenceCache(args.ref_cache_dir or out_dir / "ref_cache", key)
        scorer = model.disable_adapter if args.lora else contextlib.nullcontext
        model.eval()
        with scorer(), autocast(device, use_bf16):
            n = cache.fill_sharded(
                train_records + heldout_records, collator,
                lambda b: score_batch(model, b, args.average_log_prob, forward, args.logits_path),
                args.eval_batch_size, rank, world, accelerator.wait_for_everyone,
            )  # fmt: skip
        log(f"reference log-probs: {n} computed over {world} process(es), cache {cache.path}")

    start_step = 0
    checkpoints = list_checkpoints(out_dir)
    if args.resume and checkpoints:
        state = load_checkpoint(checkpoints[-1], model, optimizer, scheduler, rank, accelerator)
        start_step = state["step"]
        log(f"resumed from {checkpoints[-1]} at step {start_step}")
    elif args.resume:
        log(f"--resume: no checkpoint in {out_dir} yet, starting from step 0")
    if args.resume and is_main:  # the steps after the checkpoint are logged again below
        keep_rows(out_dir / "metrics.jsonl", lambda row: row["step"] <= start_step)
        keep_rows(out_dir / "eval.jsonl", lambda row: row["step"] < start_step)

    def run_eval(step):
        result = evaluate_run(
            model, heldout_records, collator, reference_logps, args, device, use_bf16, forward
        )
        if is_main:
            append_jsonl(out_dir / "eval.jsonl", {"step": step, **result})
        return result

    before = run_eval(start_step)
    start_label = "before training" if start_step == 0 else f"at step {start_step} (resumed)"
    log(f"held-out {start_label}:", json.dumps(before))

    # -- the loop -------------------------------------------------------------------------------
    history = []
    model.train()
    tokens, window_start = 0, time.perf_counter()
    bar = tqdm(range(start_step, args.max_steps), initial=start_step, total=args.max_steps,
               disable=not is_main)  # fmt: skip
    for step in bar:
        logged = []
        step_examples = batch_records(train_records, step, global_batch, args.seed)
        for micro in range(args.grad_accum):
            # This process's slice of the step's examples: micro-batch `micro` of every process
            # comes before micro-batch `micro + 1` of any.
            start = (micro * world + rank) * args.batch_size
            batch = collator(step_examples[start : start + args.batch_size])
            # Backward outside autocast: leaving it frees autocast's bf16 copies of the float32
            # adapters (600 MiB for LoRA r = 128 on a 7B model) before the backward's peak; the
            # checkpointed layers recompute under the autocast state they ran with.
            with accelerator.accumulate(step_module), lora_inputs_uncast(model, use_bf16):
                with autocast(device, use_bf16):
                    out = step_module(batch, reference_logps(batch))
                accelerator.backward(out.loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            logged.append(out.metrics())
            tokens += batch["n_tokens"]
        scheduler.step()
        row = mean_over_processes(accelerator, logged)
        row.update(step=step + 1, grad_norm=float(grad_norm), lr=scheduler.get_last_lr()[0])
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row.get('accuracy_dpo', 0):.2f}")
        if (step + 1) % args.logging_steps == 0 or step + 1 == args.max_steps:
            elapsed = time.perf_counter() - window_start
            row.update(tokens_per_s=tokens * world / elapsed, peak_mem_mb=peak_memory_mb(device))
            if is_main:
                append_jsonl(out_dir / "metrics.jsonl", row)
            tokens, window_start = 0, time.perf_counter()
        if args.eval_steps and (step + 1) % args.eval_steps == 0 and step + 1 < args.max_steps:
            run_eval(step + 1)
        if (step + 1) % args.save_steps == 0 or step + 1 == args.max_steps:
            save_checkpoint(out_dir, step + 1, model, optimizer, scheduler,
                            {"examples_seen": (step + 1) * global_batch, "args": vars(args)},
                            args.save_total_limit, accelerator, step_module)  # fmt: skip

    after = run_eval(args.max_steps)
    if is_main:
        plot_curves(out_dir)
    log(f"held-out {start_label}:", json.dumps(before))
    log(f"held-out after step {args.max_steps}:", json.dumps(after))
    key = "logp_accuracy"
    log(f"held-out preference accuracy (log p(y_w|m) > log p(y_l|m)): "
        f"{before[key]:.3f} ({start_label}) -> {after[key]:.3f}")  # fmt: skip
    accelerator.end_training()
    return {"history": history, "before": before, "after": after, "skipped": len(skipped)}


class PolicyStep(torch.nn.Module):
    """The policy's loss on a batch, as a module: under DDP its forward is the synchronised one."""

    def __init__(self, model, loss, config, logits_path, forward):
        super().__init__()
        self.model = model
        self.loss, self.config, self.logits_path, self.forward_fn = (
            loss,
            config,
            logits_path,
            forward,
        )

    def forward(self, batch, ref_logps):
        return compute_loss(self.model, batch, ref_logps, self.loss, self.config,
                            self.logits_path, forward=self.forward_fn)  # fmt: skip


def mean_over_processes(accelerator, logged: list[dict]) -> dict:
    """Metrics averaged over this process's micro-batches, then over processes."""
    names = list(logged[0])
    local = torch.tensor([[m[k] for k in names] for m in logged], dtype=torch.float64).mean(0)
    total = accelerator.reduce(local.to(accelerator.device), reduction="mean")
    return dict(zip(names, total.cpu().tolist(), strict=True))


def keep_rows(path, keep) -> None:
    """Rewrite a JSONL log with only the rows ``keep`` accepts (atomically)."""
    path = pathlib.Path(path)
    if not path.exists():
        return
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows if keep(r)), encoding="utf-8")
    tmp.replace(path)


def append_jsonl(path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast(device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def check_records(records, collator, skip_bad: bool, seen: set | None = None):
    """Every record must have a unique idx, tokenize with a target left and have readable
    images, else stop (BadRecord names the idx and field) or, with --skip_bad_records, skip and
    count. ``seen`` carries the idx values of records checked before (another split)."""
    good, bad = [], []
    seen = set() if seen is None else seen
    for record in records:
        try:
            if str(record.idx) in seen:
                raise BadRecord(record.idx, "idx", "is not unique (the reference cache and the "
                                "logs key records by idx)")  # fmt: skip
            seen.add(str(record.idx))
            collator.check(record)
            good.append(record)
        except BadRecord as error:
            if not skip_bad:
                raise
            bad.append(error)
    return good, bad


def batch_records(records, step: int, global_batch: int, seed: int):
    """The examples of optimizer step ``step``: epochs are seeded permutations cut into global
    batches, so any step is reached without replaying the earlier ones (what makes --resume
    exact), and the order does not depend on the process count."""
    per_epoch = len(records) // global_batch
    epoch, offset = divmod(step, per_epoch)
    batch_size = global_batch
    order = torch.randperm(
        len(records), generator=torch.Generator().manual_seed(seed * 1000 + epoch)
    )
    return [records[i] for i in order[offset * batch_size : (offset + 1) * batch_size].tolist()]


def param_groups(model, weight_decay: float):
    """Weight decay on matrices only (not on biases and norm scales), as usual for AdamW."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]  # fmt: skip
    return [g for g in groups if g["params"]]  # DeepSpeed drops empty groups behind our back


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    try:
        main()
    except BadRecord as error:
        sys.exit(f"bad record: {error} (pass --skip_bad_records to skip such records)")
