"""Where ``--data`` rows come from, read with Hugging Face ``datasets``.

- a local ``.parquet`` file, or a folder of them (the released SymMPO layout), read with the
  ``parquet`` builder;
- a local ``.jsonl`` / ``.json`` file (one record a line; images as paths relative to it), read
  with the ``json`` builder;
- a hub data set id (``owner/name``) and ``--data_split`` (default ``train``), read from the local
  cache: nothing is downloaded when the environment is offline (``HF_DATASETS_OFFLINE=1``), and
  a data set that is not in the cache is a one-line error saying so.

Image columns stay encoded (``datasets.Image(decode=False)``: ``{"bytes", "path"}``), so the
records' checks and the reference cache's fingerprint see the files' own bytes. Rows come out as
plain dicts in the data's order; ``symmpo.train.data`` checks them field by field.
"""

from __future__ import annotations

import contextlib
import pathlib
import re

#: owner/name, the shape of a hub data set id (a path that does not exist locally otherwise).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(source: str) -> bool:
    """Whether ``source`` names a hub data set rather than a local file or folder."""
    return (
        not pathlib.Path(source).exists()
        and HUB_ID.match(source) is not None
        and pathlib.Path(source).suffix not in (".parquet", ".jsonl", ".json")
    )


def read_rows(source: str, split: str = "train") -> tuple[list[dict], pathlib.Path | None]:
    """(rows, the folder image paths are relative to) of a local file or folder, or of split
    ``split`` of a cached hub data set. FileNotFoundError or ValueError naming ``--data``."""
    path = pathlib.Path(source)
    if is_hub_id(source):
        return _rows(_load_hub(source, split)), None
    if not path.exists():
        raise FileNotFoundError(f"--data {source}: no such file or folder")
    if path.is_dir():
        files = sorted(path.rglob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"--data {source}: the folder holds no .parquet file")
        return _rows(_load_files("parquet", files, source)), path
    if path.suffix == ".parquet":
        return _rows(_load_files("parquet", [path], source)), path.parent
    if path.suffix in (".jsonl", ".json"):
        return _rows(_load_files("json", [path], source)), path.parent
    raise ValueError(
        f"--data {source}: expected a .parquet file or folder, a .jsonl file or a hub id"
    )


@contextlib.contextmanager
def _quiet():
    """No progress bars from ``datasets`` (errors must stay one line)."""
    import datasets

    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield datasets
    finally:
        if shown:
            datasets.enable_progress_bars()


def _load_files(builder: str, files: list[pathlib.Path], source: str):
    try:
        with _quiet() as datasets:
            return datasets.load_dataset(
                builder, data_files=[str(f) for f in files], split="train", keep_in_memory=True
            )
    except Exception as error:  # the builders' parse errors: name the data and what was wrong
        raise ValueError(f"--data {source}: cannot be read as {builder} ({error})") from error


def _load_hub(source: str, split: str):
    try:
        with _quiet() as datasets:
            return datasets.load_dataset(source, split=split)
    except Exception as error:
        raise FileNotFoundError(
            f"--data {source}: not a local file or folder, and the hub data set could not be "
            f"loaded (not in the local cache while offline?): {type(error).__name__}: {error}"
        ) from error


def _rows(dataset) -> list[dict]:
    """The rows as dicts, image columns left encoded."""
    import datasets

    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):
            dataset = dataset.cast_column(name, datasets.Image(decode=False))
    return list(dataset)
