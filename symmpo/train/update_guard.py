"""Non-finite steps: an optimizer update whose loss or gradient norm is NaN or inf is skipped.

``UpdateGuard.allows(step, grad_norm, losses)`` is asked before each optimizer update: a finite
update goes ahead; a non-finite one is skipped and counted (``skipped``, logged per step as
``skipped_updates``), and more than ``patience`` of them in a row stop the run with
``NonFiniteTraining`` before a checkpoint of non-finite weights can be written. Under DeepSpeed
the engine has already stepped when the norm is known, so the first non-finite update stops it.

With several processes the decision reads the gradient norm only (after the all-reduce it is
the same on every process; a NaN loss anywhere makes it NaN), so no process steps alone.
"""

from __future__ import annotations

import math


class NonFiniteTraining(RuntimeError):
    """Training stopped: too many non-finite updates in a row."""


class UpdateGuard:
    def __init__(self, patience: int = 3, skipped: int = 0, stepped_already: bool = False):
        self.patience = patience
        self.skipped = skipped  # over the whole run (restored on resume)
        self.in_a_row = 0
        self.stepped_already = stepped_already  # DeepSpeed: the engine stepped in backward

    def allows(self, step: int, grad_norm, losses=()) -> bool:
        """Whether the update of optimizer step ``step`` (1-based) may be applied."""
        values = [float(v) for v in losses]
        norm = None if grad_norm is None else float(grad_norm)
        finite = all(math.isfinite(v) for v in values) and (norm is None or math.isfinite(norm))
        if finite:
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        if self.stepped_already or self.in_a_row > self.patience:
            raise NonFiniteTraining(
                f"step {step}: the loss or gradient norm was not finite in {self.in_a_row} "
                f"update(s) in a row (loss {values}, gradient norm {norm}); the run stops before "
                "a checkpoint of non-finite weights is written (the saved checkpoints are kept): "
                "check the model's weights and the data, or lower --lr"
            )
        return False
