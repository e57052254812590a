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
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

BENCHMARKS = ("amber", "objhal", "mmhal", "hallusion", "mmstar")


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
