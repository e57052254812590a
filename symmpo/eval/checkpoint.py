"""A saved run evaluated as the trainer evaluates it.

``symmpo.train.build.rebuild_run`` rebuilds the run from its checkpoint through the same builders
training used (model and attention route, collator and objective, held-out split, reference);
``evaluate_run`` then scores it as the run's own periodic evaluation did.
"""

from __future__ import annotations

from ..train.build import rebuild_run
from .preference import evaluate_run


def evaluate_checkpoint(checkpoint):
    """Rebuild the run that wrote ``checkpoint`` (a checkpoint-<step> folder) and evaluate it on
    the run's held-out records; the reference is the run's initial model (the adapters disabled
    for LoRA runs). Returns (model, collator, trainer state, metrics)."""
    run = rebuild_run(checkpoint)
    result = evaluate_run(
        run.model,
        run.heldout,
        run.collator,
        run.reference,
        run.args,
        run.device,
        run.bf16,
        run.forward,
    )
    return run.model, run.collator, run.state, result
