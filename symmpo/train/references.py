"""Where the reference log-probs s_k^ref come from (``--ref``): one object per strategy.

Each strategy is a callable ``reference(batch) -> (K*B,)`` float32 tensor, kind-major like the
batch's sequences, with a ``prepare(...)`` step that runs once before training:

- ``RecordLogps``: the data's own ``logps`` column (its sums, or its averages under
  ``--average_log_prob``), read from the batch; nothing is computed. Used only when the run
  tokenizes and preprocesses as the column's numbers were computed: the released ``llava_v1``
  template and ``crop`` images (``record_logps_fit``).
- ``PrecomputedReference``: one pass of the initial model over every record before training,
  cached on disk under a fingerprint of everything the numbers depend on (``ReferenceCache``).
- ``AdaptersOffReference``: the policy itself with its LoRA adapters disabled, every step.
- ``FrozenCopyReference``: a frozen copy of the initial model, every step.

``choose_reference`` picks one from the flags and the data.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass

import torch

from .forwards import score_batch
from .reference_cache import ReferenceCache, fingerprint
from .update_guard import NonFiniteTraining


@dataclass
class Scorer:
    """Sequence log-probs of a batch under a model, no gradient, as the policy is scored."""

    forward: object
    average: bool
    logits_path: bool
    device: torch.device
    bf16: bool

    def __call__(self, model, batch: dict) -> torch.Tensor:
        with torch.no_grad(), autocast(self.device, self.bf16):
            return score_batch(model, batch, self.average, self.forward, self.logits_path)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when ``enabled``."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


class RecordLogps:
    def __init__(self, average: bool = False):
        self.average = average

    def prepare(self, *args, **kwargs) -> str:
        which = "averages" if self.average else "sums"
        return f"reference log-probs: the data's logps column, its {which} (no reference pass)"

    def __call__(self, batch: dict) -> torch.Tensor:
        return batch["ref_avg_logps" if self.average else "ref_logps"]


class PrecomputedReference:
    """One pass of the initial model (adapters disabled under LoRA), sharded over processes,
    cached in ``folder`` under ``key``; resumed if interrupted."""

    def __init__(self, folder, key: str, scorer: Scorer, model, lora: bool, note=None):
        self.cache = ReferenceCache(folder, key)
        self.scorer, self.model, self.lora = scorer, model, lora
        self.note = note  # why the data's own logps column is not the reference, if it has one

    def prepare(self, records, collator, batch_size=16, rank=0, world=1, barrier=None) -> str:
        """Score the records not cached yet (this process's share of them); a log line."""
        model = self.model
        adapters_off = model.disable_adapter if self.lora else contextlib.nullcontext
        was_training = model.training
        model.eval()
        with adapters_off():
            score = lambda batch: self.scorer(model, batch)
            n = self.cache.fill_sharded(
                records, collator, score, batch_size, rank, world, barrier or (lambda: None)
            )
        model.train(was_training)
        bad = [r.idx for r in records if not all(map(math.isfinite, self.cache.values[str(r.idx)]))]
        if bad:
            raise NonFiniteTraining(
                f"the reference pass scored {len(bad)} record(s) as non-finite (first idx="
                f"{bad[0]}) in {self.cache.path}: the initial model's weights hold NaN or inf; "
                "fix the model (and delete that cache file) before training"
            )
        line = (
            f"reference log-probs: {n} computed over {world} process(es), cache {self.cache.path}"
        )
        return f"{self.note}\n{line}" if self.note else line

    def __call__(self, batch: dict) -> torch.Tensor:
        return self.cache.lookup(batch["idx"])


class AdaptersOffReference:
    def __init__(self, model, scorer: Scorer):
        self.model, self.scorer = model, scorer

    def prepare(self, *args, **kwargs) -> str:
        return "reference log-probs: the policy with its adapters disabled, every step"

    def __call__(self, batch: dict) -> torch.Tensor:
        with self.model.disable_adapter():
            return self.scorer(self.model, batch)


class FrozenCopyReference:
    def __init__(self, model, scorer: Scorer):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.scorer = scorer

    def prepare(self, *args, **kwargs) -> str:
        return "reference log-probs: a frozen copy of the initial model, every step"

    def __call__(self, batch: dict) -> torch.Tensor:
        return self.scorer(self.model, batch)


def cache_key(args, model_identity: dict, data_identity: dict, collator, bf16: bool, model) -> str:
    """The fingerprint of everything a precomputed reference log-prob depends on: the model
    (its identity holds its config), the data's content, the template, the image
    preprocessing (the image processor's config: size, crop, mean/std...) and the flags."""
    objective = collator.objective
    return fingerprint(
        model=model_identity,
        data=data_identity,
        **collator.preprocessing_identity(),
        max_length=args.max_length,
        loss=objective.name,
        average=args.average_log_prob,
        seed=args.seed if objective.second_image == "corrupted" else None,  # mDPO's crops
        bf16=bf16,
        forward=args.forward,
        shared_attention=args.shared_attention if args.forward == "shared" else None,
        logits_path=args.logits_path,
        liger=args.liger,
        weights=str(next(model.parameters()).dtype),  # DeepSpeed's bf16 casts them
    )


#: What the released data's ``logps`` column was computed under: its template and images.
RECORD_LOGPS_TEMPLATE, RECORD_LOGPS_IMAGES = "llava_v1", "crop"


def record_logps_fit(args, records, collator) -> tuple[bool, str | None]:
    """(whether the data's logps column is this run's reference, and when the data has one
    that does not fit, the one-line reason). It fits when every record has one, the objective's
    sequences are all in it, the run formats and preprocesses as the released training did
    (template llava_v1, crop), and under --average_log_prob the column holds averages."""
    if not collator.objective.record_logps or any(r.ref_logps is None for r in records):
        return False, None
    template, images = collator.template.name, collator.image_aspect_ratio
    if (template, images) != (RECORD_LOGPS_TEMPLATE, RECORD_LOGPS_IMAGES):
        return False, (
            f"the data's logps column was computed under --template {RECORD_LOGPS_TEMPLATE} "
            f"--image_aspect_ratio {RECORD_LOGPS_IMAGES}, this run uses --template {template} "
            f"--image_aspect_ratio {images}: computing the reference log-probs instead"
        )
    if args.average_log_prob and any(r.ref_avg_logps is None for r in records):
        return False, (
            "--average_log_prob: the data's logps column holds sums only (no averages): "
            "computing the reference log-probs instead"
        )
    return True, None


def choose_reference(args, policy, records, collator, scorer: Scorer, cache_folder, key_parts):
    """The strategy for ``--ref`` lora or precompute, once the policy is final (LoRA added,
    wrapped by accelerate: the cache key reads its weights' dtype). ``--ref model`` is a
    ``FrozenCopyReference`` made before LoRA is added. ``key_parts``: (model_identity,
    data_identity) for the cache's key."""
    if args.ref == "lora":
        return AdaptersOffReference(policy, scorer)
    fits, reason = record_logps_fit(args, records, collator)
    if fits:
        return RecordLogps(args.average_log_prob)
    key = cache_key(args, *key_parts, collator, scorer.bf16, policy)
    return PrecomputedReference(cache_folder, key, scorer, policy, args.lora, note=reason)
