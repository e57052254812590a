"""``python -m symmpo.evaluate``: the command line of ``symmpo.eval.cli`` (see its ``--help``).

The evaluation lives in the ``symmpo.eval`` package, one module per concern; the names below are
re-exported for code that imported them from here.
"""

from __future__ import annotations

from .eval.checkpoint import evaluate_checkpoint
from .eval.cli import main
from .eval.generation import generate_answers
from .eval.hallucination import (
    amber_metrics,
    build_synonyms,
    chair_metrics,
    fold,
    mentioned_objects,
    parse_groups,
    scene_hallucinations,
)
from .eval.plots import plot_curves
from .eval.preference import evaluate_run, preference_metrics
from .eval.readers import read_amber, read_jsonl

__all__ = [
    "amber_metrics",
    "build_synonyms",
    "chair_metrics",
    "evaluate_checkpoint",
    "evaluate_run",
    "fold",
    "generate_answers",
    "main",
    "mentioned_objects",
    "parse_groups",
    "plot_curves",
    "preference_metrics",
    "read_amber",
    "read_jsonl",
    "scene_hallucinations",
]

if __name__ == "__main__":
    main()
