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
import copy
import json
import math
import pathlib
import random
import resource
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from symmpo import SymMPOConfig
from symmpo.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from symmpo.train.collator import PreferenceCollator
from symmpo.train.data import BadRecord, load_records, records_from_rows, split_heldout
from symmpo.train.model import LORA_PRESET, add_lora, load_llava, num_image_tokens, tiny_llava
from symmpo.train.objectives import FORWARDS, LOSSES, compute_loss, score_batch
from symmpo.train.reference_cache import ReferenceCache, file_identity, fingerprint

# ---------------------------------------------------------------------------------------------
# Settings. Defaults for a real model follow the released SymMPO scripts (beta 0.1, lambda 0.5,
# lr 5e-6 for full fine-tuning, warmup 0.05, weight decay 0.01, max length 2048). Their LoRA
# script's lr 5e-7 looks like a slip (a tenth of the full fine-tuning rate, where LoRA usually
# needs a higher one); --lora defaults to 2e-5 instead (see the README).
# ---------------------------------------------------------------------------------------------


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
    p.add_argument("--logits_path", action="store_true", help="lm_head + symmpo_loss instead")
    p.add_argument("--max_steps", type=int, default=None, help="default: 1200 tiny, 1 epoch real")
    p.add_argument("--batch_size", type=int, default=None, help="examples per micro-batch")
    p.add_argument("--grad_accum", type=int, default=1)
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


def main(argv=None) -> dict:
    args = parse_args(argv)
    seed_everything(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.model_name_or_path is None
    args.max_steps = args.max_steps or (1200 if tiny else None)
    args.batch_size = args.batch_size or (8 if tiny else 4)
    args.lr = args.lr or (1e-3 if tiny else 2e-5 if args.lora else 5e-6)
    out_dir = pathlib.Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    use_bf16 = device.type == "cuda" and not args.no_bf16
    forward = FORWARDS[args.forward]

    # -- model, tokenizer, image processor ----------------------------------------------------
    if tiny:
        from symmpo.train.tokenizer import build_tokenizer

        tokenizer = build_tokenizer()
        model, image_processor = tiny_llava(tokenizer, seed=args.seed)
        model_identity = {"tiny": args.seed, "config": model.config.to_json_string()}
    else:
        dtype = torch.bfloat16 if use_bf16 else torch.float32
        model, tokenizer, image_processor = load_llava(args.model_name_or_path, dtype, device)
        model_identity = {"path": args.model_name_or_path, "config": model.config.to_json_string()}
    model.to(device)
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
        train_records, heldout_records = split_heldout(
            load_records(args.data), args.heldout, args.seed
        )
        skipped = []
        data_identity = {"data": file_identity(args.data)}
    collator = PreferenceCollator(
        tokenizer, image_processor, model.config.image_token_id, num_image_tokens(model.config),
        max_length=args.max_length, loss=args.loss, seed=args.seed,
    )  # fmt: skip
    train_records, bad = check_records(train_records, collator, args.skip_bad_records)
    heldout_records, bad_heldout = check_records(heldout_records, collator, args.skip_bad_records)
    skipped += bad + bad_heldout
    if skipped:
        print(f"skipped {len(skipped)} bad record(s), first: {skipped[0]}")
    if len(train_records) < args.batch_size:
        raise ValueError(f"{len(train_records)} usable training records < batch size")
    steps_per_epoch = len(train_records) // (args.batch_size * args.grad_accum)
    args.max_steps = args.max_steps or steps_per_epoch

    # -- reference ------------------------------------------------------------------------------
    config = SymMPOConfig(
        beta=args.beta, beta_contrast=args.beta_contrast, pair_weight=args.pair_weight,
        margin_weight=args.margin_weight, anchor_weight=args.anchor_weight, delta=args.delta,
        average_log_prob=args.average_log_prob,
    )  # fmt: skip
    ref_model = None
    if args.ref == "model":
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    if args.lora:
        model = add_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout)
    elif args.ref == "lora":
        raise ValueError("--ref lora scores the reference with the adapters disabled: add --lora")
    cache = None
    all_have_logps = all(r.ref_logps is not None for r in train_records + heldout_records)
    if args.ref == "precompute" and not (all_have_logps and args.loss != "mdpo"):
        key = fingerprint(
            model=model_identity, data=data_identity, template=collator.template.version,
            max_length=args.max_length, loss=args.loss, average=args.average_log_prob,
            seed=args.seed if args.loss == "mdpo" else None,
        )  # fmt: skip
        cache = ReferenceCache(args.ref_cache_dir or out_dir / "ref_cache", key)
        scorer = model.disable_adapter if args.lora else _nullcontext
        model.eval()
        with scorer(), autocast(device, use_bf16):
            n = cache.fill(
                train_records + heldout_records,
                collator,
                lambda b: score_batch(model, b, args.average_log_prob, forward),
                args.eval_batch_size,
            )
        print(f"reference log-probs: {n} computed, cache {cache.path}")

    def reference_logps(batch):
        if batch["ref_logps"] is not None and cache is None and args.ref == "precompute":
            return batch["ref_logps"]
        if cache is not None:
            return cache.lookup(batch["idx"])
        with torch.no_grad(), autocast(device, use_bf16):
            if args.ref == "lora":
                with model.disable_adapter():
                    return score_batch(model, batch, args.average_log_prob, forward)
            return score_batch(ref_model, batch, args.average_log_prob, forward)

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

    start_step, position = 0, 0
    checkpoints = list_checkpoints(out_dir)
    if args.resume:
        if not checkpoints:
            raise FileNotFoundError(f"--resume: no checkpoint in {out_dir}")
        state = load_checkpoint(checkpoints[-1], model, optimizer, scheduler)
        start_step, position = state["step"], state["position"]
        print(f"resumed from {checkpoints[-1]} at step {start_step}")

    before = evaluate(model, heldout_records, collator, reference_logps, args, device, use_bf16)
    print("held-out before training:", json.dumps(before))

    # -- the loop -------------------------------------------------------------------------------
    metrics_file = (out_dir / "metrics.jsonl").open("a", encoding="utf-8")
    history = []
    model.train()
    tokens, window_start = 0, time.perf_counter()
    bar = tqdm(range(start_step, args.max_steps), initial=start_step, total=args.max_steps)
    for step in bar:
        logged = []
        for _ in range(args.grad_accum):
            batch = collator(batch_records(train_records, position, args.batch_size, args.seed))
            position += 1
            with autocast(device, use_bf16):
                out = compute_loss(
                    model, batch, reference_logps(batch), args.loss, config, args.logits_path,
                    forward=forward,
                )  # fmt: skip
            (out.loss / args.grad_accum).backward()
            logged.append(out.metrics())
            tokens += batch["n_tokens"]
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        row = {k: sum(m[k] for m in logged) / len(logged) for k in logged[0]}
        row.update(step=step + 1, grad_norm=float(grad_norm), lr=scheduler.get_last_lr()[0])
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row.get('accuracy_dpo', 0):.2f}")
        if (step + 1) % args.logging_steps == 0 or step + 1 == args.max_steps:
            elapsed = time.perf_counter() - window_start
            row.update(tokens_per_s=tokens / elapsed, peak_mem_mb=peak_memory_mb(device))
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
            tokens, window_start = 0, time.perf_counter()
        if (step + 1) % args.save_steps == 0 or step + 1 == args.max_steps:
            save_checkpoint(out_dir, step + 1, model, optimizer, scheduler,
                            {"position": position}, args.save_total_limit)  # fmt: skip
    metrics_file.close()

    after = evaluate(model, heldout_records, collator, reference_logps, args, device, use_bf16)
    print("held-out before training:", json.dumps(before))
    print("held-out after training: ", json.dumps(after))
    key = "logp_accuracy"
    print(f"held-out preference accuracy (log p(y_w|m) > log p(y_l|m)): "
          f"{before[key]:.3f} -> {after[key]:.3f}")  # fmt: skip
    return {"history": history, "before": before, "after": after, "skipped": len(skipped)}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def autocast(device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def check_records(records, collator, skip_bad: bool):
    """Every record must tokenize with a target left and have readable images, else stop
    (BadRecord names the idx and field) or, with --skip_bad_records, skip and count."""
    good, bad = [], []
    for record in records:
        try:
            collator.check(record)
            good.append(record)
        except BadRecord as error:
            if not skip_bad:
                raise
            bad.append(error)
    return good, bad


def batch_records(records, position: int, batch_size: int, seed: int):
    """Micro-batch number ``position``: epochs are seeded permutations, so any position is
    reached without replaying the earlier ones (what makes --resume exact)."""
    per_epoch = len(records) // batch_size
    epoch, offset = divmod(position, per_epoch)
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
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]  # fmt: skip


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def evaluate(model, records, collator, reference_logps, args, device, use_bf16) -> dict:
    """Held-out preference accuracy: how often the policy gives the preferred response the higher
    log-prob (log p(y_w|m) > log p(y_l|m); for SymMPO also y_w over y_w' on m and y_w' over
    y_w on m'), and the reward accuracy beta(r_w - r_l) > 0 against the reference."""
    was_training = model.training
    model.eval()
    wins = {"logp_accuracy": 0, "reward_accuracy": 0, "contrast_accuracy_m": 0,
            "contrast_accuracy_m_prime": 0}  # fmt: skip
    count = 0
    for start in range(0, len(records), args.eval_batch_size):
        chunk = records[start : start + args.eval_batch_size]
        batch = collator(chunk)
        with autocast(device, use_bf16):
            logps = score_batch(model, batch, args.average_log_prob, FORWARDS[args.forward]).cpu()
        ref = reference_logps(batch).cpu()
        kinds = len(collator.sequences)
        s, r = logps.view(kinds, -1), (logps - ref).view(kinds, -1)
        wins["logp_accuracy"] += int((s[0] > s[1]).sum())
        wins["reward_accuracy"] += int((r[0] > r[1]).sum())
        if args.loss == "symmpo":
            wins["contrast_accuracy_m"] += int((s[0] > s[2]).sum())
            wins["contrast_accuracy_m_prime"] += int((s[4] > s[3]).sum())
        count += len(chunk)
    if was_training:
        model.train()
    result = {k: v / max(count, 1) for k, v in wins.items()}
    if args.loss != "symmpo":
        result = {k: v for k, v in result.items() if not k.startswith("contrast")}
    return result


if __name__ == "__main__":
    try:
        main()
    except BadRecord as error:
        sys.exit(f"bad record: {error} (pass --skip_bad_records to skip such records)")
