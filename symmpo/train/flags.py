"""train.py's flags: every flag with its help and default, and the checked number types.

``build_parser()`` gives the parser (``--help`` shows each flag with a sentence and its default);
a value outside a flag's range is an argparse error naming the flag, the value and what is
allowed, printed as one line (exit status 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .model import LORA_PRESET
from .templates import TEMPLATES

LOSSES = ("symmpo", "dpo", "mdpo")  # symmpo.train.objectives.OBJECTIVES, without importing torch


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every flag's default shown (unless its help states it); the description as written."""

    def _get_help_string(self, action):
        if "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of the usage block and the message
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(
    kind: type, low: float, high: float | None = None, *, low_open=False, high_open=False
) -> Callable:
    """An argparse type: ``kind`` within [low, high] (open ends where asked)."""
    if low is not None and high is not None:
        allowed = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    else:
        allowed = f"{'>' if low_open else '>='} {low}"
    noun = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}; allowed: {noun} {allowed}") from None
        too_low = value <= low if low_open else value < low
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high or value != value:  # NaN fails every comparison
            raise argparse.ArgumentTypeError(f"got {text}; allowed: {noun} {allowed}")
        return value

    parse.__name__ = kind.__name__
    return parse


POSITIVE_INT = _number(int, 1)
COUNT = _number(int, 0)
POSITIVE = _number(float, 0, low_open=True)
NON_NEGATIVE = _number(float, 0)
FRACTION = _number(float, 0, 1, high_open=True)
FINITE = _number(float, float("-inf"), float("inf"), low_open=True, high_open=True)


def build_parser(description: str = "") -> argparse.ArgumentParser:
    p = _Parser(
        prog="train.py",
        description=description,
        formatter_class=_Formatter,
    )
    run = p.add_argument_group("run")
    run.add_argument(
        "--output_dir",
        default="out/symmpo-tiny",
        help="metrics, checkpoints and the reference cache; a folder holding an "
        "earlier run needs --resume (nothing is overwritten)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output_dir from its latest checkpoint",
    )
    run.add_argument(
        "--config",
        default=None,
        help="a YAML file of flags ({flag: value}; flags given on the command line win)",
    )
    run.add_argument("--seed", type=int, default=0, help="seeds weights, data order and crops")
    run.add_argument(
        "--model_name_or_path",
        default=None,
        help="a LLaVA-1.5 checkpoint in the Hugging Face format (a local folder or "
        "an already cached hub name); default: the tiny built-in model",
    )
    data = p.add_argument_group("data")
    data.add_argument(
        "--data",
        default=None,
        help="a released-layout parquet file or folder, a .jsonl file, or a hub data set id "
        "(from the local cache); "
        "default: the embedded synthetic set",
    )
    data.add_argument(
        "--dataloader_workers",
        type=COUNT,
        default=None,
        help="processes collating batches ahead (images decoded, text tokenized); "
        "default: 2 with a GPU, 0 (the main process) without",
    )
    data.add_argument(
        "--data_split", default="train", help="the split of a hub data set id given as --data"
    )
    data.add_argument(
        "--heldout",
        type=COUNT,
        default=None,
        help="records set apart for evaluation; default: 64 for the embedded "
        "set, else a tenth of the records, at most 64",
    )
    data.add_argument(
        "--n_train", type=POSITIVE_INT, default=2400, help="embedded set: training records"
    )
    data.add_argument(
        "--template",
        choices=TEMPLATES,
        default="llava_v1",
        help="llava_v1: the released training's conversation and targets (system sentence, "
        "USER/ASSISTANT, </s> scored; what its logps were computed under); processor: the "
        "checkpoint processor's chat template",
    )
    data.add_argument(
        "--image_aspect_ratio",
        choices=("crop", "pad"),
        default="crop",
        help="crop: the image processor alone (the released training, and its logps); pad: "
        "pad to a square with the processor's mean colour first (LLaVA-1.5's own recipe)",
    )
    data.add_argument(
        "--max_length",
        type=POSITIVE_INT,
        default=2048,
        help="tokens per sequence; truncation cuts only the answer",
    )
    data.add_argument(
        "--skip_bad_records",
        action="store_true",
        help="skip and count bad records instead of stopping",
    )
    sft = p.add_argument_group("supervised stage (the tiny default: LLaVA's recipe in miniature)")
    sft.add_argument(
        "--sft_steps",
        type=COUNT,
        default=None,
        help="captioning steps on (m, y_w) and (m', y_w') before preference training, vision "
        "tower and projector frozen, cached in --output_dir; default 600 for the tiny model, "
        "0 (skip) for a checkpoint",
    )
    sft.add_argument("--sft_lr", type=POSITIVE, default=1e-3, help="the supervised stage's lr")
    sft.add_argument(
        "--sft_cache_dir",
        default=None,
        help="where the supervised model is cached (runs sharing it start from the same "
        "model, e.g. --loss dpo/mdpo/symmpo); default: --output_dir",
    )
    loss = p.add_argument_group("loss (docs/math.md)")
    loss.add_argument(
        "--loss",
        choices=LOSSES,
        default="symmpo",
        help="symmpo; dpo (sequences 0, 1); mdpo (adds y_w on a random crop of m)",
    )
    loss.add_argument(
        "--beta",
        type=POSITIVE,
        default=0.1,
        help="beta: the preferences' and the anchor's inverse temperature",
    )
    loss.add_argument(
        "--beta_contrast",
        type=POSITIVE,
        default=None,
        help="beta' of the rewards on m' (k = 3, 4); default: --beta",
    )
    loss.add_argument(
        "--pair_weight", type=NON_NEGATIVE, default=0.5, help="lambda: weight of the two pair terms"
    )
    loss.add_argument(
        "--margin_weight", type=NON_NEGATIVE, default=1e-4, help="gamma: weight of the margin term"
    )
    loss.add_argument(
        "--anchor_weight", type=NON_NEGATIVE, default=1.0, help="eta: weight of the anchor terms"
    )
    loss.add_argument("--delta", type=FINITE, default=0.0, help="delta: the anchor terms' margin")
    loss.add_argument(
        "--average_log_prob", action="store_true", help="mean instead of sum of token log-probs"
    )
    ref = p.add_argument_group("reference and forward")
    ref.add_argument(
        "--ref",
        choices=("precompute", "lora", "model"),
        default="precompute",
        help="precompute: one pass with the initial model, cached on disk (or the "
        "data's logps column); lora: the policy with its adapters disabled; "
        "model: a frozen copy",
    )
    ref.add_argument(
        "--ref_cache_dir",
        default=None,
        help="where --ref precompute caches; default: <output_dir>/ref_cache",
    )
    ref.add_argument(
        "--forward",
        choices=("naive", "shared"),
        default="naive",
        help="naive: all 5B sequences; shared: each image + question prefix once",
    )
    ref.add_argument(
        "--shared_attention",
        choices=("auto", "mask", "varlen"),
        default="auto",
        help="how --forward shared attends: padded rows and a 4-D mask (sdpa), or "
        "one unpadded stream and variable-length attention; auto: varlen where "
        "PyTorch's flash kernels run (CUDA sm80+, bf16), else mask",
    )
    ref.add_argument(
        "--logits_path",
        action="store_true",
        help="the loss from lm_head's logits (symmpo_loss) instead of from hidden "
        "states (symmpo_loss_from_hidden)",
    )
    opt = p.add_argument_group("optimisation")
    opt.add_argument(
        "--max_steps",
        type=POSITIVE_INT,
        default=None,
        help="optimizer steps; default: 300 for the tiny model, else one epoch",
    )
    opt.add_argument(
        "--batch_size",
        type=POSITIVE_INT,
        default=None,
        help="examples per micro-batch and process; default: 8 tiny, 4 real",
    )
    opt.add_argument(
        "--grad_accum",
        type=POSITIVE_INT,
        default=1,
        help="micro-batches per optimizer step and process",
    )
    opt.add_argument(
        "--global_batch_size",
        type=POSITIVE_INT,
        default=None,
        help="examples per optimizer step over all processes (sets --grad_accum)",
    )
    opt.add_argument(
        "--lr",
        type=POSITIVE,
        default=None,
        help="AdamW learning rate; default: 1e-3 tiny, 2e-5 LoRA, 5e-6 full",
    )
    opt.add_argument(
        "--lr_scheduler_type",
        choices=("cosine", "constant"),
        default="cosine",
        help="after a linear warmup",
    )
    opt.add_argument(
        "--warmup_ratio", type=FRACTION, default=0.05, help="share of --max_steps for the warmup"
    )
    opt.add_argument(
        "--weight_decay", type=NON_NEGATIVE, default=0.01, help="AdamW weight decay of matrices"
    )
    opt.add_argument(
        "--max_grad_norm", type=POSITIVE, default=1.0, help="gradient clipping to this global norm"
    )
    opt.add_argument(
        "--lora",
        action="store_true",
        help="train peft LoRA adapters on the language model's linear layers",
    )
    opt.add_argument("--lora_r", type=POSITIVE_INT, default=LORA_PRESET["r"], help="LoRA rank r")
    opt.add_argument(
        "--lora_alpha",
        type=POSITIVE,
        default=LORA_PRESET["alpha"],
        help="LoRA scale alpha (update scaled by alpha / r)",
    )
    opt.add_argument(
        "--lora_dropout",
        type=FRACTION,
        default=LORA_PRESET["dropout"],
        help="dropout on the LoRA inputs",
    )
    opt.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="recompute each decoder layer in the backward",
    )
    opt.add_argument(
        "--no_bf16",
        action="store_true",
        help="no bf16 autocast on CUDA (it is on by default there)",
    )
    opt.add_argument(
        "--liger", action="store_true", help="Liger-Kernel RMSNorm / SwiGLU / RoPE patches (CUDA)"
    )
    log = p.add_argument_group("logging and evaluation")
    log.add_argument(
        "--logging_steps",
        type=POSITIVE_INT,
        default=10,
        help="append a metrics.jsonl row every N steps",
    )
    log.add_argument(
        "--save_steps",
        type=POSITIVE_INT,
        default=50,
        help="save a checkpoint every N steps (and at the end)",
    )
    log.add_argument(
        "--save_total_limit",
        type=POSITIVE_INT,
        default=2,
        help="checkpoints kept (the latest ones)",
    )
    log.add_argument(
        "--eval_steps",
        type=POSITIVE_INT,
        default=None,
        help="evaluate every N steps; always before and after training",
    )
    log.add_argument(
        "--eval_batch_size",
        type=POSITIVE_INT,
        default=16,
        help="records per evaluation and reference-scoring batch",
    )
    log.add_argument(
        "--report_to",
        choices=("none", "tensorboard", "wandb"),
        default="none",
        help="also log metrics through accelerate's tracker (into --output_dir; metrics.jsonl "
        "stays)",
    )
    log.add_argument(
        "--merge_lora",
        action="store_true",
        help="LoRA: also write <output_dir>/merged, the model with the adapters merged in",
    )
    log.add_argument(
        "--eval_generate",
        type=COUNT,
        default=64,
        help="embedded set: held-out questions answered greedily for the hallucination rate",
    )
    return p
