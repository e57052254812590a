"""A run's pieces from its flags: defaults, model, collator, data, loss config, optimizer.

``train.py`` calls these in order; a custom script can too (every function takes the flags'
namespace, ``symmpo.train.cli.build_parser().parse_args([...])`` gives one with the defaults):

    args = resolve_defaults(parse_args([...]))
    model, tokenizer, processor, identity = build_model(args, device, bf16=False)
    collator = build_collator(args, model, tokenizer, processor)
    data = build_data(args, collator)
    optimizer, scheduler = build_optimizer(args, model)

``rebuild_run(checkpoint)`` rebuilds a saved run's model, collator, held-out records and
reference for evaluation.
"""

from __future__ import annotations

import functools
import math
import pathlib
import random
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from symmpo import SymMPOConfig

from .checkpoint import load_weights, read_trainer_state, saved_shared_attention
from .cli import UsageError
from .collator import PreferenceCollator
from .data import (
    check_records,
    default_heldout,
    load_records,
    records_fingerprint,
    records_from_rows,
    split_heldout,
)
from .forwards import FORWARDS
from .model import add_lora, apply_liger, build_policy, num_image_tokens
from .references import AdaptersOffReference, FrozenCopyReference, Scorer
from .sft import supervised_model
from .shared_varlen import choose_shared_attention, use_varlen_attention

#: The tiny built-in default's sizes: a 600-step supervised stage, then 300 preference steps of
#: 8 examples at lr 5e-4.
TINY = {"batch_size": 8, "max_steps": 300, "lr": 5e-4, "heldout": 64, "sft_steps": 600}
#: A real checkpoint's: the released recipe's lr 5e-6 for full fine-tuning; LoRA 2e-5 (README).
REAL = {"batch_size": 4, "lr_full": 5e-6, "lr_lora": 2e-5}


def resolve_defaults(args):
    """Fill the flags whose default depends on the model (tiny built-in or real)."""
    tiny = args.model_name_or_path is None
    args.batch_size = args.batch_size or (TINY["batch_size"] if tiny else REAL["batch_size"])
    args.max_steps = args.max_steps or (TINY["max_steps"] if tiny else None)  # real: one epoch
    if args.lr is None:
        args.lr = TINY["lr"] if tiny else REAL["lr_lora"] if args.lora else REAL["lr_full"]
    if args.heldout is None and args.data is None:
        args.heldout = TINY["heldout"]
    if getattr(args, "sft_steps", 0) is None:
        args.sft_steps = TINY["sft_steps"] if tiny and args.data is None else 0  # built-in set
    if getattr(args, "dataloader_workers", 0) is None:
        args.dataloader_workers = 2 if torch.cuda.is_available() else 0
    return args


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def loss_config(args) -> SymMPOConfig:
    """The loss's options from ``args`` (train.py's flags, or any object with the same fields)."""
    return SymMPOConfig(
        beta=args.beta,
        beta_contrast=args.beta_contrast,
        pair_weight=args.pair_weight,
        margin_weight=args.margin_weight,
        anchor_weight=args.anchor_weight,
        delta=args.delta,
        average_log_prob=args.average_log_prob,
    )


def build_model(args, device: torch.device, bf16: bool, saved_state: dict | None = None):
    """(model, tokenizer, image_processor, identity) before LoRA: weights in bf16 only under
    LoRA (the frozen base; full fine-tuning keeps float32 weights under bf16 autocast, since
    AdamW steps of lr 5e-6 vanish below a bf16 weight's rounding), Liger's patches, the shared
    forward's attention route (``args.shared_attention`` resolved; a resumed run keeps its
    saved route), gradient checkpointing."""
    shared = args.forward == "shared"
    model, tokenizer, processor, identity = build_policy(
        args.model_name_or_path, args.seed, device, bf16 and args.lora, shared
    )
    if args.liger:
        apply_liger(model, device)
    if shared:
        compute_dtype = torch.bfloat16 if bf16 else next(model.parameters()).dtype
        saved = saved_shared_attention(saved_state)
        if args.shared_attention == "auto" and saved is not None:
            args.shared_attention = saved
        args.shared_attention = choose_shared_attention(
            args.shared_attention, model, device, compute_dtype
        )
        if saved is not None and args.shared_attention != saved:
            raise UsageError(
                f"--shared_attention {args.shared_attention}: the run in {args.output_dir} "
                f"trained with the {saved} route; allowed: {saved} or auto"
            )
        if args.shared_attention == "varlen":
            use_varlen_attention(model)
    if getattr(args, "gradient_checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer, processor, identity


def build_collator(args, model, tokenizer, processor) -> PreferenceCollator:
    return PreferenceCollator(
        tokenizer,
        processor,
        model.config.image_token_id,
        num_image_tokens(model.config),
        max_length=args.max_length,
        objective=args.loss,
        seed=args.seed,
        template=args.template,
        image_aspect_ratio=args.image_aspect_ratio,
    )


@dataclass
class Data:
    """The usable records of a run, their identity (the reference cache's key) and the bad
    records skipped (``--skip_bad_records``)."""

    train: list
    heldout: list
    identity: dict
    skipped: list = field(default_factory=list)


def build_data(args, collator, check_train: bool = True) -> Data:
    """The embedded synthetic set (``--n_train`` + ``--heldout``) or ``--data`` split into
    train and held-out records (``args.heldout`` resolved), every record checked (BadRecord,
    or skipped and counted); ``check_train=False`` checks the held-out records only."""
    skip = args.skip_bad_records
    if args.data is None:
        from .synthetic import synthetic_splits

        train_rows, heldout_rows = synthetic_splits(args.n_train, args.heldout, seed=args.seed)
        train, skipped = records_from_rows(train_rows, skip)
        heldout, more = records_from_rows(heldout_rows, skip)
        skipped += more
        identity = {"records": records_fingerprint(train + heldout)}
    else:
        records, skipped = load_records(args.data, skip, getattr(args, "data_split", "train"))
        if args.heldout is None:
            args.heldout = default_heldout(len(records))
        train, heldout = split_heldout(records, args.heldout, args.seed)
        identity = {"records": records_fingerprint(records)}  # contents, not file stats
    seen: set = set()
    train, bad = check_records(train, collator, skip, seen) if check_train else (train, [])
    heldout, bad_heldout = check_records(heldout, collator, skip, seen)
    return Data(train, heldout, identity, skipped + bad + bad_heldout)


def check_batch_fits(args, data: Data, world: int) -> int:
    """The global batch (examples per optimizer step); UsageError naming the sizes and
    --heldout when the training records do not fill one."""
    global_batch = args.batch_size * world * args.grad_accum
    if len(data.train) < global_batch:
        held = f"{len(data.heldout)} held out (--heldout)"
        bad = f", {len(data.skipped)} skipped as bad" if data.skipped else ""
        raise UsageError(
            f"{len(data.train)} training records ({held}{bad}) are fewer than one global batch "
            f"of {global_batch} (--batch_size {args.batch_size} x {world} process(es) x "
            f"--grad_accum {args.grad_accum}); lower --heldout or the batch, or add records"
        )
    return global_batch


def param_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (not on biases and norm scales), as usual for AdamW."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]  # DeepSpeed drops empty groups behind our back


def build_optimizer(args, model):
    """AdamW (betas 0.9, 0.999) and the warmup + cosine/constant schedule over --max_steps."""
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    groups = param_groups(model, args.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999))
    warmup = math.ceil(args.warmup_ratio * args.max_steps)
    if args.lr_scheduler_type == "cosine":
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, args.max_steps)
    else:
        scheduler = get_constant_schedule_with_warmup(optimizer, warmup)
    return optimizer, scheduler


@dataclass
class RebuiltRun:
    """A saved run's pieces for evaluation (``rebuild_run``)."""

    model: object
    collator: PreferenceCollator
    heldout: list
    reference: object  # callable batch -> (K*B,) reference log-probs
    args: SimpleNamespace
    state: dict
    device: torch.device
    bf16: bool
    forward: object


def rebuild_run(checkpoint) -> RebuiltRun:
    """The run of ``checkpoint`` (a checkpoint-<step> folder) rebuilt from its saved flags:
    its model with the saved weights, collator, held-out records (bad ones skipped or raising
    as in training), and its initial model as the reference (adapters disabled under LoRA, a
    second model otherwise), scored online."""
    state = read_trainer_state(checkpoint)  # verified against its manifest first
    defaults = {"shared_attention": "auto", "template": "llava_v1", "image_aspect_ratio": "crop"}
    defaults.update(sft_steps=0, sft_lr=1e-3, sft_cache_dir=None)
    run = SimpleNamespace(**{**defaults, **state["args"]})
    run.gradient_checkpointing = run.liger = False  # evaluation needs neither
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cuda" and not run.no_bf16
    model, tokenizer, processor, identity = build_model(run, device, bf16, state)
    forward = FORWARDS[run.forward]
    collator = build_collator(run, model, tokenizer, processor)
    data = build_data(run, collator, check_train=run.sft_steps > 0)
    if run.sft_steps:  # the run's supervised model, from its cache: the reference starts there
        folder = run.sft_cache_dir or pathlib.Path(checkpoint).parent
        say = functools.partial(print, file=sys.stderr)  # stdout carries evaluate's JSON
        model, _ = supervised_model(run, model, collator, data.train, folder, identity, say, False)
    scorer = Scorer(forward, run.average_log_prob, False, device, bf16)
    if run.lora:
        model = add_lora(model, run.lora_r, run.lora_alpha, run.lora_dropout)
        reference = AdaptersOffReference(model, scorer)
    else:
        reference = FrozenCopyReference(model, scorer)  # a copy of the initial weights
    load_weights(checkpoint, model)
    return RebuiltRun(model, collator, data.heldout, reference, run, state, device, bf16, forward)
