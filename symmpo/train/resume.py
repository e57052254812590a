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

from .cli import UsageError

#: Flags a resumed run may change: they decide what is logged, saved and evaluated, not what
#: is trained (gradient checkpointing recomputes the same values).
CHANGEABLE = frozenset(
    {
        "logging_steps",
        "save_steps",
        "save_total_limit",
        "eval_steps",
        "eval_batch_size",
        "eval_generate",
        "gradient_checkpointing",
    }
)
#: Flags that name the run or the command itself, never compared.
NOT_COMPARED = frozenset({"output_dir", "resume", "ref_cache_dir"})


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
