"""``--resume`` continues the same run: the saved flags are the run's, and a flag that would
change the run is refused.

A resumed run takes every flag not given on the command line from the run's saved arguments
(so ``python train.py --resume --output_dir X`` is enough). A flag given with the value the run
saved is fine. A flag given with another value is allowed only when it does not change what
is trained: the logging, saving and evaluation cadence, gradient checkpointing (memory, not
math) and ``--max_steps`` upward (the schedule is stretched to the new length from the saved
step on). Any other change (data, seed, loss and its weights, batch sizes, lengths, schedule,
learning rate, model, reference, forward, precision) is refused with one line naming each flag,
its new value and the saved one.
"""

from __future__ import annotations

import argparse
import json
import pathlib

from .cli import UsageError

#: Flags a resumed run may change: they decide what is logged, saved and evaluated, or where
#: its caches are, not what is trained (gradient checkpointing recomputes the same values).
#: Not given again, they keep the run's saved values (a cache folder found where it was made).
CHANGEABLE = frozenset(
    {
        "logging_steps",
        "save_steps",
        "save_total_limit",
        "eval_steps",
        "eval_batch_size",
        "eval_generate",
        "gradient_checkpointing",
        "dataloader_workers",
        "report_to",
        "merge_lora",
        "ref_cache_dir",
        "sft_cache_dir",
    }
)
#: Flags that name the run or the command itself, never compared.
NOT_COMPARED = frozenset({"output_dir", "resume", "config"})


def continue_run(args: argparse.Namespace, given: set[str], saved: dict, log=print):
    """``args`` with every flag not in ``given`` (dests set on the command line) taken from
    ``saved`` (the run's saved arguments); UsageError naming every given flag whose value
    would change the run; the allowed changes are said through ``log``."""
    conflicts, changes = [], []
    for name, value in vars(args).items():
        if name in NOT_COMPARED or name not in saved:
            continue
        before = saved[name]
        if name not in given:
            setattr(args, name, before)
        elif value == before:
            continue
        elif name in CHANGEABLE or (name == "max_steps" and _more_steps(value, before)):
            changes.append(f"--{name} {before} -> {value}")
        else:
            conflicts.append(f"--{name} {value} (the run has {before})")
    if conflicts:
        raise UsageError(
            f"--resume: {args.output_dir} is another run: {'; '.join(conflicts)}; drop those "
            "flags to continue it, or start a new run in another --output_dir"
        )
    if changes:
        log(f"--resume: continuing with {', '.join(changes)}")
    return args


def _more_steps(value, before) -> bool:
    return value is not None and before is not None and value > before


#: The run's resolved flags, written before its reference pass: a run killed before its first
#: checkpoint resumes with its own flags too.
RUN_ARGS = "run_args.json"


def write_run_args(output_dir, args: argparse.Namespace) -> None:
    """``<output_dir>/run_args.json`` (atomically: a temporary file renamed into place)."""
    path = pathlib.Path(output_dir) / RUN_ARGS
    tmp = path.with_name(f".{RUN_ARGS}.tmp")
    tmp.write_text(json.dumps(vars(args), indent=1, default=str), encoding="utf-8")
    tmp.replace(path)


def saved_run_args(output_dir, checkpoint_state: dict | None) -> dict | None:
    """The saved flags of the run in ``output_dir``: its latest checkpoint's, else those it
    wrote before its reference pass, else None."""
    if checkpoint_state is not None:
        return checkpoint_state["args"]
    path = pathlib.Path(output_dir) / RUN_ARGS
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"--resume: {path} is unreadable ({error}); start a new run") from None
