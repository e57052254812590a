"""SymMPO training of a LLaVA-1.5 model with this library's loss: a thin reference trainer.

    python train.py                                   # tiny default: CPU, minutes, no downloads
    python train.py --model_name_or_path llava-hf/llava-1.5-7b-hf --data symmpo_data/ \\
        --lora --output_dir out/llava-symmpo          # a real (already cached) checkpoint
    python train.py --resume --output_dir out/symmpo-tiny      # continue the latest checkpoint

One step: collate B examples into 5B kind-major sequences (each of the 2B distinct images
encoded once), one policy pass, the loss from the last hidden states at target positions
(symmpo_loss_from_hidden), AdamW. The reference log-probs are precomputed once with the initial
model and cached on disk (--ref precompute), or scored online (--ref lora / model). The pieces
live in symmpo/train/ (flags: cli.py; model, data, optimizer: build.py; references.py).
"""

from __future__ import annotations

import json
import pathlib
import time

from tqdm.auto import tqdm

from symmpo.eval.plots import plot_curves
from symmpo.eval.preference import evaluate_run
from symmpo.eval.summary import before_after
from symmpo.train.batches import MicroBatches, micro_batch_loader
from symmpo.train.build import (
    build_collator,
    build_data,
    build_model,
    build_optimizer,
    check_batch_fits,
    loss_config,
    resolve_defaults,
    seed_everything,
)
from symmpo.train.checkpoint import (
    latest_state,
    list_checkpoints,
    load_checkpoint,
    resumable_checkpoint,
    save_checkpoint,
)
from symmpo.train.cli import check_combinations, given_flags, parse_args, run_main
from symmpo.train.distributed import fill_deepspeed_sizes, make_accelerator
from symmpo.train.forwards import FORWARDS
from symmpo.train.hf_export import save_hf, save_merged
from symmpo.train.model import add_lora, lora_inputs_uncast
from symmpo.train.objectives import PolicyStep
from symmpo.train.references import FrozenCopyReference, Scorer, autocast, choose_reference
from symmpo.train.resume import continue_run, saved_run_args, write_run_args
from symmpo.train.run_lock import RunLock
from symmpo.train.run_log import append_jsonl, keep_rows, mean_over_processes, peak_memory_mb
from symmpo.train.sft import supervised_rows, supervised_stage
from symmpo.train.update_guard import UpdateGuard


def main(argv=None) -> dict:
    # -- settings: every flag checked before any work (symmpo/train/cli.py) ---------------------
    args = parse_args(argv, __doc__)
    out_dir = pathlib.Path(args.output_dir)
    saved = latest_state(out_dir) if args.resume else None
    run_args = saved_run_args(out_dir, saved) if args.resume else None
    if run_args is not None:  # the same run: its saved flags; one that would change it refused
        args = continue_run(args, given_flags(argv), run_args)
    args = resolve_defaults(check_combinations(args))
    if saved is not None and saved["step"] >= (args.max_steps or 0):
        print(
            f"the run in {out_dir} finished at step {saved['step']} (--max_steps "
            f"{args.max_steps}): nothing to do; its results are in {out_dir}"
        )
        return {"history": [], "finished": True, "step": saved["step"]}
    accelerator = make_accelerator(args)
    if args.report_to != "none":  # numbers and strings only: trackers take no lists or None
        plain = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("symmpo", config=plain)
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    is_main = accelerator.is_main_process
    log = print if is_main else (lambda *a, **k: None)
    lock = RunLock(out_dir, log) if is_main else None  # one writer per output folder
    seed_everything(args.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    bf16 = device.type == "cuda" and not args.no_bf16
    forward = FORWARDS[args.forward]

    # -- model, data, reference, optimizer ------------------------------------------------------
    model, tokenizer, processor, model_identity = build_model(args, device, bf16, saved)
    fill_deepspeed_sizes(accelerator, model)
    if args.forward == "shared":
        log(f"--forward shared attends with the {args.shared_attention} route")
    collator = build_collator(args, model, tokenizer, processor)
    data = build_data(args, collator)
    if data.skipped:
        log(f"skipped {len(data.skipped)} bad record(s), first: {data.skipped[0]}")
    sft_rows = []
    if args.sft_steps:  # LLaVA's recipe in miniature: captions first, vision tower frozen
        model, sft = supervised_stage(
            args, model, collator, data.train, args.sft_cache_dir or out_dir, model_identity, log
        )
        model_identity = {**model_identity, "supervised": sft["key"]}  # the reference starts here
        sft_rows = supervised_rows(sft["losses"], args.logging_steps)  # metrics.jsonl, step 0
    global_batch = check_batch_fits(args, data, world)
    args.max_steps = args.max_steps or len(data.train) // global_batch  # one epoch
    if is_main:
        write_run_args(out_dir, args)  # every flag resolved: what --resume continues
    scorer = Scorer(forward, args.average_log_prob, args.logits_path, device, bf16)
    frozen = FrozenCopyReference(model, scorer) if args.ref == "model" else None
    if args.lora:
        model = add_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout)
    optimizer, scheduler = build_optimizer(args, model)
    # The step module goes through DDP's forward (gradient sync); the scheduler is stepped by
    # hand once per optimizer step (accelerate's wrapper would step it once per process).
    step_module = PolicyStep(model, args.loss, loss_config(args), args.logits_path, forward)
    step_module, optimizer = accelerator.prepare(step_module, optimizer)
    # The reference pass comes after prepare (under ZeRO-3 the parameters are only gathered by
    # the engine's hooks) and before any optimizer step: it scores the initial model.
    records, cache = data.train + data.heldout, args.ref_cache_dir or out_dir / "ref_cache"
    identities = (model_identity, data.identity)  # the precomputed cache's key
    reference = frozen or choose_reference(
        args, model, records, collator, scorer, cache, identities
    )
    barrier = accelerator.wait_for_everyone
    log(reference.prepare(records, collator, args.eval_batch_size, rank, world, barrier))

    start_step, skipped = 0, 0
    checkpoint = resumable_checkpoint(out_dir, log, accelerator) if args.resume else None
    if checkpoint is not None:  # the newest that verifies; damaged ones reported, moved aside
        state = load_checkpoint(checkpoint, model, optimizer, scheduler, rank, accelerator)
        start_step, skipped = state["step"], state.get("skipped_updates", 0)
        log(f"resumed from {checkpoint} at step {start_step}")
    elif args.resume:
        log(f"--resume: no checkpoint in {out_dir} yet, starting from step 0")
    if args.resume and is_main:  # the steps after the checkpoint (all at step 0) logged again
        for name in ("metrics.jsonl", "eval.jsonl"):
            keep_rows(out_dir / name, lambda r: start_step > 0 and r["step"] <= start_step, log)
    for row in sft_rows if is_main and start_step == 0 else []:
        append_jsonl(out_dir / "metrics.jsonl", row)

    def run_eval(step: int, record: bool = True) -> dict | None:
        if not data.heldout:
            return None
        result = evaluate_run(model, data.heldout, collator, reference, args, device, bf16, forward)
        if is_main and record:
            stage = "sft" if step == 0 and args.sft_steps else "preference"
            append_jsonl(out_dir / "eval.jsonl", {"stage": stage, "step": step, **result})
            numbers = {f"eval/{k}": v for k, v in result.items() if isinstance(v, (int, float))}
            accelerator.log(numbers, step=step)
        return result

    start_label = "before training" if start_step == 0 else f"at step {start_step} (resumed)"
    before = run_eval(start_step, record=start_step == 0)  # a resumed run's logs: as if unbroken
    if before is None:
        log("no held-out records (--heldout 0): the run is not evaluated")
    else:
        log(f"held-out {start_label}: {json.dumps(before)}")

    # -- the loop ---------------------------------------------------------------------------------
    guard = UpdateGuard(
        skipped=skipped, stepped_already=accelerator.state.deepspeed_plugin is not None
    )
    history = []
    model.train()
    tokens, window_start = 0, time.perf_counter()
    bar = tqdm(
        range(start_step, args.max_steps),
        initial=start_step,
        total=args.max_steps,
        disable=not is_main,
    )
    micro = MicroBatches(data.train, collator, args, global_batch, world, rank, start_step)
    batches = iter(micro_batch_loader(micro, args.dataloader_workers))  # this process's, in order
    for step in bar:
        logged, losses = [], []
        for _ in range(args.grad_accum):
            batch = next(batches)
            # Backward outside autocast: leaving it frees autocast's bf16 copies of the float32
            # adapters (600 MiB for LoRA r = 128 on a 7B model) before the backward's peak; the
            # checkpointed layers recompute under the autocast state they ran with.
            with accelerator.accumulate(step_module), lora_inputs_uncast(model, bf16):
                with autocast(device, bf16):
                    out = step_module(batch, reference(batch))
                accelerator.backward(out.loss)
                out.raise_if_invalid()  # the fused kernels' input checks, read with the grad norm
                losses += [out.loss.detach()] if world == 1 else []  # see update_guard.py
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    if guard.allows(step + 1, grad_norm, losses):  # non-finite: skipped
                        optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            logged.append(out.metrics())
            tokens += batch["n_tokens"]
        scheduler.step()
        row = mean_over_processes(accelerator, logged)
        row.update(step=step + 1, grad_norm=float(grad_norm), lr=scheduler.get_last_lr()[0])
        row.update(skipped_updates=guard.skipped)
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row.get('accuracy_dpo', 0):.2f}")
        if (step + 1) % args.logging_steps == 0 or step + 1 == args.max_steps:
            elapsed = time.perf_counter() - window_start
            row.update(tokens_per_s=tokens * world / elapsed, peak_mem_mb=peak_memory_mb(device))
            if is_main:
                append_jsonl(out_dir / "metrics.jsonl", {"stage": "preference", **row})
                accelerator.log({f"train/{k}": v for k, v in row.items()}, step=step + 1)
            tokens, window_start = 0, time.perf_counter()
        if args.eval_steps and (step + 1) % args.eval_steps == 0 and step + 1 < args.max_steps:
            run_eval(step + 1)
        if (step + 1) % args.save_steps == 0 or step + 1 == args.max_steps:
            state = {
                "examples_seen": (step + 1) * global_batch,
                "args": vars(args),
                "skipped_updates": guard.skipped,
            }
            save_checkpoint(
                out_dir,
                step + 1,
                model,
                optimizer,
                scheduler,
                state,
                args.save_total_limit,
                accelerator,
                step_module,
                export=lambda folder, weights: save_hf(
                    model, tokenizer, processor, folder / "hf", weights
                ),
            )

    if args.merge_lora and is_main:
        log(f"merged model: {save_merged(model, tokenizer, processor, out_dir / 'merged')}")
    after = run_eval(args.max_steps)
    plot = plot_curves(out_dir) if is_main else None
    if after is not None:
        log(f"held-out after step {args.max_steps}: {json.dumps(after)}")
        first = "supervised" if start_step == 0 and args.sft_steps else start_label
        log(before_after(before, after, first, f"after step {args.max_steps}"))
    log(
        f"saved in {out_dir}: checkpoints {', '.join(p.name for p in list_checkpoints(out_dir))}; "
        f"training metrics metrics.jsonl"
        + ("; evaluations eval.jsonl" if after else "")
        + (f"; plot {plot.name}" if plot else "")
    )
    accelerator.end_training()
    if lock is not None:
        lock.release()
    return {"history": history, "before": before, "after": after, "skipped": len(data.skipped)}


if __name__ == "__main__":
    run_main(main)
