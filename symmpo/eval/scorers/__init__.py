"""Scorers of the paper's evaluation benchmarks, each by its official algorithm.

One module per benchmark (``amber``, ``objhal``, ``mmhal``, ``hallusion``, ``mmstar``), each with:

- ``load_questions(benchmark_dir) -> list[Question]``: the benchmark's official questions, for
  ``python -m symmpo.evaluate generate``;
- ``answer_row(question, answer) -> dict``: one entry of the answers file the official scorer
  reads, and ``write_answers(rows, path)``: that file, in its official format;
- ``score(answers, benchmark_dir, judge=None) -> dict[str, float]``: the metrics, under the
  keys ``python -m symmpo.evaluate score`` appends to ``eval.jsonl``. A benchmark that needs an
  LLM judge takes a ``symmpo.eval.judge.Judge`` (online endpoint, or offline: requests out,
  replies in).

The helpers below are what several of those modules share: finding an official file, reading
and writing JSON answers files, and averaging per category.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
from collections.abc import Iterable
from dataclasses import dataclass, field

BENCHMARKS = ("amber", "objhal", "mmhal", "hallusion", "mmstar")

#: WordNet's noun suffix substitutions, in its order (nltk's ``morphy``): the lemmatizers of the
#: AMBER and Object HalBench scorers apply them as the official scripts' nltk does.
WORDNET_NOUN_SUFFIXES = (
    ("s", ""),
    ("ses", "s"),
    ("ves", "f"),
    ("xes", "x"),
    ("zes", "z"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("men", "man"),
    ("ies", "y"),
)


@dataclass
class Question:
    """One benchmark question: its official id, its image (a path, raw bytes or a PIL image;
    None for a text-only question), the prompt the model answers, and the official fields the
    answers file must carry along."""

    id: object
    image: object
    prompt: str
    fields: dict = field(default_factory=dict)


def scorer(name: str):
    """The module of benchmark ``name``."""
    if name not in BENCHMARKS:
        raise ValueError(f"--benchmark must be one of {BENCHMARKS}, got {name!r}")
    return importlib.import_module(f"{__name__}.{name}")


# -- files -------------------------------------------------------------------------------------


def first_file(
    folder, names: Iterable[str], subfolders: Iterable[str] = ("",)
) -> pathlib.Path | None:
    """The first of ``names`` that is a file in ``folder`` (or in ``subfolders`` of it, tried in
    order, each for every name); None when none is."""
    base = pathlib.Path(folder)
    for sub in subfolders:
        for name in names:
            path = base / sub / name
            if path.is_file():
                return path
    return None


def official_file(benchmark_dir, names: Iterable[str], what: str, detail: str = "") -> pathlib.Path:
    """``benchmark_dir`` itself when it is a file, else the first of ``names`` in it; else
    FileNotFoundError ``"no {what} in {benchmark_dir}{detail}"``."""
    path = pathlib.Path(benchmark_dir)
    if path.is_file():
        return path
    found = first_file(path, names)
    if found is None:
        raise FileNotFoundError(f"no {what} in {path}{detail}")
    return found


def _json_lines(text: str) -> list:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_jsonl(path) -> list:
    """The values of a JSON lines file, one a line (blank lines skipped)."""
    return _json_lines(pathlib.Path(path).read_text(encoding="utf-8"))


def read_json(path):
    """A JSON file's value, or the list of its lines' values when it is JSON lines."""
    text = pathlib.Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return _json_lines(text)


def read_entries(source) -> list:
    """Entries from ``source``: a list of them (any iterable), or the path of a JSON list or
    JSONL file of them (a file of one JSON object is one entry); ValueError when the file is not
    a list of objects."""
    if not isinstance(source, (str, os.PathLike)):
        return list(source)
    entries = read_json(source)
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"{source} is not a list of question objects")
    return entries


def check_keys(rows: list, keys: Iterable[str], name=None, note: str = "") -> list:
    """``rows``, once each has every one of ``keys``; else ValueError ``"answer N has no 'key'"``
    for the first row that lacks one (N its position, or ``name(row)``), ``note`` appended."""
    for i, row in enumerate(rows):
        missing = [key for key in keys if key not in row]
        if missing:
            label = i if name is None else name(row)
            raise ValueError(f"answer {label} has no {missing[0]!r}{note}")
    return rows


def write_json_list(rows, path, indent: int | None = None) -> None:
    """``rows`` as one JSON list in ``path`` (its folder made), non-ASCII text kept as is."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        json.dump(list(rows), f, indent=indent, ensure_ascii=False)


# -- metrics -----------------------------------------------------------------------------------


def group_by(keys: Iterable, values: Iterable) -> dict[object, list]:
    """{key: the values under it, in order}, keys in the order first seen."""
    groups: dict[object, list] = {}
    for key, value in zip(keys, values, strict=True):
        groups.setdefault(key, []).append(value)
    return groups


def group_means(keys: Iterable, values: Iterable) -> dict[object, float]:
    """{key: the mean of its values}, keys in the order first seen."""
    return {key: sum(group) / len(group) for key, group in group_by(keys, values).items()}


def category_key(name) -> str:
    """A category as part of a metric key: lower-cased, words joined by ``_`` ("unknown" when
    it has none)."""
    return "_".join(str(name).lower().split()) or "unknown"
