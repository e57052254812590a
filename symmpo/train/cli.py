"""train.py's command line checked before any work (the flags themselves: ``flags.py``).

``parse_args`` checks each value and the files; ``check_combinations`` the flags that need each
other; ``given_flags`` tells which flags the command line set (``symmpo.train.resume``).

A wrong value stops with one line that names the flag, the value and what is allowed, and exit
status 2 (``UsageError``; argparse's own errors go the same way). Bad records end in one line
with exit status 1. ``run_main`` turns those errors into that line; any other exception is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import sys
from collections.abc import Callable

from .checkpoint import list_checkpoints
from .data import BadRecord
from .data_source import is_hub_id
from .flags import build_parser
from .update_guard import NonFiniteTraining


class UsageError(ValueError):
    """A flag, a flag combination or an output folder that cannot be used; the message names
    the flag, the value and what is allowed."""


def check_paths(args: argparse.Namespace) -> argparse.Namespace:
    """The file system's checks, before any work: a missing --data first, then the output
    folder (an earlier run needs --resume; --resume needs one). Raises UsageError."""
    if args.data is not None and not is_hub_id(args.data):
        data = pathlib.Path(args.data)
        if not data.exists():
            raise UsageError(f"--data {args.data}: no such file or folder")
        args.data = str(data.resolve())  # stored in checkpoints: evaluate may run elsewhere
    for name in ("ref_cache_dir", "sft_cache_dir"):  # stored with the run, read from elsewhere
        if getattr(args, name, None) is not None:
            setattr(args, name, str(pathlib.Path(getattr(args, name)).resolve()))
    out = pathlib.Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output_dir {args.output_dir}: is a file, not a folder")
    earlier = holds_run(out)
    if args.resume and not earlier:
        raise UsageError(
            f"--resume: {args.output_dir} holds no run to resume (no checkpoint, "
            "metrics or reference cache); drop --resume to start one"
        )
    if not args.resume and earlier:
        raise UsageError(
            f"--output_dir {args.output_dir} holds an earlier run: pass --resume "
            "to continue it, or choose another folder; nothing was overwritten"
        )
    return args


def check_combinations(args: argparse.Namespace) -> argparse.Namespace:
    """Flags that need each other (after a resumed run's saved flags are in). UsageError."""
    if args.shared_attention != "auto" and args.forward != "shared":
        raise UsageError(
            f"--shared_attention {args.shared_attention}: chooses how --forward "
            "shared attends; allowed only with --forward shared"
        )
    if args.ref == "lora" and not args.lora:
        raise UsageError(
            "--ref lora scores the reference with the adapters disabled; allowed only with --lora"
        )
    if args.report_to != "none" and importlib.util.find_spec(args.report_to) is None:
        raise UsageError(f"--report_to {args.report_to}: pip install {args.report_to} first")
    if args.merge_lora and not args.lora:
        raise UsageError("--merge_lora merges LoRA adapters; allowed only with --lora")
    if args.liger and not _has_cuda():
        raise UsageError("--liger: Liger-Kernel's patches run on CUDA only; no GPU is visible")
    return args


def holds_run(output_dir: pathlib.Path) -> bool:
    """Whether a folder holds an earlier run: a checkpoint, metrics, a reference cache or the
    flags a run writes before its reference pass."""
    if list_checkpoints(output_dir):
        return True
    return any(
        (output_dir / name).exists() for name in ("metrics.jsonl", "ref_cache", "run_args.json")
    )


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def with_config(argv=None) -> list[str]:
    """``argv`` (default sys.argv[1:]) with the flags of its ``--config`` YAML file put first,
    so that the command line's own flags win. UsageError naming the file for an unreadable
    file, a key that is no flag, or a value that is a list or a mapping."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config")
    config = parser.parse_known_args(argv)[0].config
    if config is None:
        return argv
    import yaml

    try:
        values = yaml.safe_load(pathlib.Path(config).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise UsageError(f"--config {config}: cannot read it ({error})") from None
    if not isinstance(values, dict):
        raise UsageError(f"--config {config}: must hold a mapping of flag: value")
    actions = {a.dest: a for a in build_parser()._actions}
    tokens = []
    for key, value in values.items():
        action = actions.get(str(key).lstrip("-"))
        if action is None or action.dest in ("config", "help"):
            raise UsageError(f"--config {config}: {key!r} is not a flag of train.py")
        if isinstance(value, (list, dict)):
            raise UsageError(f"--config {config}: {key}: expected one value, got {value!r}")
        flag = action.option_strings[0]
        if action.nargs == 0:  # a switch: true turns it on
            tokens += [flag] if value else []
        elif value is not None:
            tokens += [flag, str(value)]
    return tokens + argv


def parse_args(argv=None, description: str = "") -> argparse.Namespace:
    """The flags of train.py (a ``--config`` file's first), every value and the file system
    checked (UsageError); the combinations are checked by ``check_combinations`` once a resumed
    run's flags are in."""
    return check_paths(build_parser(description).parse_args(with_config(argv)))


def given_flags(argv=None) -> set[str]:
    """The dests of the flags set on the command line or in its --config file."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(with_config(argv)))) - {"config"}


def run_main(main: Callable, argv=None, prog: str | None = None):
    """``main(argv)`` with a newcomer's errors as one line on stderr: UsageError exits with
    status 2, BadRecord and NonFiniteTraining with status 1; nothing else is caught."""
    prog = prog or os.path.basename(sys.argv[0]) or "train.py"
    try:
        return main(argv)
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except NonFiniteTraining as error:
        print(f"{prog}: stopped: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except BadRecord as error:
        print(
            f"{prog}: bad record: {error} (pass --skip_bad_records to skip such records)",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
