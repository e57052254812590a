"""train.py, which is a script and not a package module, loaded fresh for a test."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_train_script():
    """A new module object of train.py (its main(), helpers and module-level state)."""
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
