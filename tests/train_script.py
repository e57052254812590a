"""train.py, which is a script and not a package module, loaded fresh for a test."""

import functools
import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: Tests train the preference stage alone unless they ask for the supervised stage: its default
#: 600 steps would add a minute to every tiny run (tests/test_sft.py covers the stage).
NO_SUPERVISED_STAGE = ["--sft_steps", "0"]


def without_supervised_stage(argv):
    """``argv`` with ``--sft_steps 0`` added when it neither sets the stage nor resumes a run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a.startswith("--sft_steps") for a in argv) or "--resume" in argv:
        return argv
    return [*argv, *NO_SUPERVISED_STAGE]


def load_train_script(supervised_stage: bool = False):
    """A new module object of train.py (its main(), helpers and module-level state); its main()
    skips the supervised stage (``without_supervised_stage``) unless ``supervised_stage``."""
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not supervised_stage:
        main = module.main
        module.main = functools.wraps(main)(lambda argv=None: main(without_supervised_stage(argv)))
    return module
