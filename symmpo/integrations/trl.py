"""SymMPO with TRL: ``SymMPOTrainer``, a ``trl.DPOTrainer`` whose data, reference and loss are
symmpo's (docs/trl.md).

    from symmpo.integrations.trl import SymMPOTrainer, SymMPOTrainerConfig

    config = SymMPOTrainerConfig(output_dir="out/llava-symmpo", loss="symmpo", beta=0.1)
    trainer = SymMPOTrainer(model, args=config, train_dataset=rows, processing_class=processor)
    trainer.train()

TRL keeps the loop: optimizer and schedule, gradient accumulation, mixed precision, one process
or DDP, PEFT through ``peft_config``, checkpoints, logging and callbacks. symmpo brings:

- the data: a list of ``PreferenceRecord``, or rows in the released layout (dicts or a
  ``datasets.Dataset``: idx, question, image_1, image_2, resp_1_w, resp_1_l, resp_2_w and
  optionally logps), checked once, then batched by a ``PreferenceCollator``: the objective's
  sequences kind-major, each distinct image through the vision tower once;
- the reference log-probs, fixed before training as train.py's ``--ref precompute`` fixes
  them: the records' ``logps`` column where it is this run's reference
  (``references.record_logps_fit``), else one pass of the initial model, cached on disk
  (``references.PrecomputedReference``);
- the loss: ``symmpo.train.objectives.compute_loss`` (SymMPO's fused path from the last hidden
  states; DPO and mDPO from sequence log-probs), its metrics logged as ``symmpo/<name>``.

DPOTrainer's own data and reference steps cannot express five sequences over two images, so
the trainer replaces them through DPOTrainer's methods for them: ``_prepare_dataset`` (TRL
tokenizes prompt/chosen/rejected columns; here a dataset becomes an index into the checked
records) and ``_precompute_ref_logps`` (TRL scores chosen/rejected pairs; here symmpo's
reference, kept by record idx). The data helpers are in ``trl_data``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset
from transformers.utils import logging
from trl import DPOConfig, DPOTrainer

from symmpo import SymMPOConfig

from ..train.build import loss_config
from ..train.collator import PreferenceCollator
from ..train.data import PreferenceRecord, check_records, records_fingerprint
from ..train.forwards import score_batch
from ..train.model import unwrap
from ..train.objectives import OBJECTIVES, compute_loss, get_objective
from ..train.references import PrecomputedReference, cache_key, record_logps_fit
from .trl_data import RECORD, RecordBatches, as_records, collator_from_processor

logger = logging.get_logger(__name__)

#: DPOConfig options of TRL's own loss and data handling, which SymMPOTrainer replaces: set to
#: anything but their defaults they would be ignored without a word, so they are refused.
TRL_LOSS_OPTIONS = (
    "loss_type",
    "loss_weights",
    "ld_alpha",
    "f_divergence_type",
    "label_smoothing",
    "use_weighting",
    "sync_ref_model",
    "padding_free",
    "truncation_mode",
)


@dataclass
class SymMPOTrainerConfig(DPOConfig):
    """``DPOConfig`` plus the options of this library's losses (train.py's flags of the same
    names, docs/math.md#defaults). ``beta`` is DPOConfig's own (default 0.1, as SymMPO's).

    Changed defaults: ``max_length`` 2048 (train.py's; it sizes the collator built from a
    processor, a collator passed in keeps its own) and ``precompute_ref_log_probs`` True, which
    must stay: the reference is fixed before training, no reference model is kept.
    """

    loss: str = field(
        default="symmpo",
        metadata={"help": "The objective (train.py's --loss).", "choices": sorted(OBJECTIVES)},
    )
    beta_contrast: float | None = field(
        default=None,
        metadata={"help": "beta' of the rewards on the contrastive image m'; None: beta."},
    )
    pair_weight: float = field(default=0.5, metadata={"help": "lambda: the pair terms' weight."})
    margin_weight: float = field(default=1e-4, metadata={"help": "gamma: the margin's weight."})
    anchor_weight: float = field(default=1.0, metadata={"help": "eta: the anchors' weight."})
    delta: float = field(default=0.0, metadata={"help": "delta: the anchor terms' margin."})
    average_log_prob: bool = field(
        default=False, metadata={"help": "Mean instead of sum of the token log-probs."}
    )
    ref_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of the reference pass's cache; default: <output_dir>/ref_cache."},
    )
    max_length: int | None = field(
        default=2048,
        metadata={"help": "Tokens per sequence of the collator built from processing_class."},
    )
    precompute_ref_log_probs: bool = field(
        default=True,
        metadata={"help": "Must be True: symmpo's reference is fixed before training."},
    )

    def __post_init__(self):
        super().__post_init__()
        get_objective(self.loss)  # ValueError naming the allowed losses
        if not self.precompute_ref_log_probs:
            raise ValueError(
                "SymMPOTrainerConfig.precompute_ref_log_probs must be True: the reference "
                "log-probs are the data's logps column or one pass of the initial model before "
                "training; an online reference model is not supported"
            )
        defaults = {
            f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(DPOConfig)
            if f.name in TRL_LOSS_OPTIONS
        }
        changed = [name for name in TRL_LOSS_OPTIONS if getattr(self, name) != defaults[name]]
        if changed:
            raise ValueError(
                f"SymMPOTrainerConfig: {', '.join(changed)} configure TRL's own DPO loss or data "
                "handling, which SymMPOTrainer replaces; leave them at their defaults. The loss "
                "is set by loss, beta, beta_contrast, pair_weight, margin_weight, anchor_weight, "
                "delta and average_log_prob"
            )
        self.loss_config()  # each option checked as the loss checks it

    def loss_config(self) -> SymMPOConfig:
        """The loss's options, read from these fields as train.py reads its flags."""
        return loss_config(self)


class SymMPOTrainer(DPOTrainer):
    """TRL's DPOTrainer training with symmpo's loss (``args.loss``: symmpo, dpo or mdpo).

    ``model``: a loaded LLaVA model (or a peft model of one). ``train_dataset`` and
    ``eval_dataset`` (one, or a dict of them): lists of ``PreferenceRecord``, rows of the
    released layout, or a ``datasets.Dataset`` of such rows. ``data_collator``: a
    ``PreferenceCollator`` for ``args.loss``; by default one is built from ``processing_class``
    (a LLaVA processor: its tokenizer and image processor, the released llava_v1 template, crop
    images). No ``ref_model``: the reference log-probs are fixed before training.
    """

    _tag_names = ["trl", "symmpo"]
    _name = "SymMPO"
    _paper = {}  # DPOTrainer's model card would cite the DPO paper

    def __init__(
        self,
        model,
        args: SymMPOTrainerConfig | None = None,
        data_collator: PreferenceCollator | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
    ):
        if isinstance(model, str):
            raise TypeError(
                "SymMPOTrainer takes a loaded LLaVA model (LlavaForConditionalGeneration."
                "from_pretrained(...)), not a model id: the collator reads its config first"
            )
        args = SymMPOTrainerConfig() if args is None else args
        if not isinstance(args, SymMPOTrainerConfig):
            raise TypeError(f"args must be a SymMPOTrainerConfig, got {type(args).__name__}")
        if data_collator is None:
            data_collator = collator_from_processor(model, processing_class, args)
        if not isinstance(data_collator, PreferenceCollator):
            raise TypeError(
                "data_collator must be a symmpo PreferenceCollator (it batches the records: "
                f"five sequences over two images), got {type(data_collator).__name__}"
            )
        if data_collator.objective.name != args.loss:
            raise ValueError(
                f"the data_collator batches the sequences of {data_collator.objective.name!r}, "
                f"args.loss is {args.loss!r}: build the collator with objective={args.loss!r}"
            )
        self.symmpo_collator = data_collator
        self.symmpo_objective = data_collator.objective
        self.symmpo_config = args.loss_config()
        self.records: list[PreferenceRecord] = []  # every dataset's records; RECORD indexes it
        self.ref_logps: dict[str, list[float]] = {}  # record idx -> its K reference log-probs
        # DPOTrainer accepts only datasets.Dataset objects: the records become one here.
        if train_dataset is None:
            raise ValueError("train_dataset is required")
        train_dataset = self._prepare_dataset(train_dataset, None, args, "train")
        if isinstance(eval_dataset, dict):
            eval_dataset = {
                k: self._prepare_dataset(v, None, args, k) for k, v in eval_dataset.items()
            }
        elif eval_dataset is not None:
            eval_dataset = self._prepare_dataset(eval_dataset, None, args, "eval")
        super().__init__(
            model,
            ref_model=None,  # the reference log-probs are computed once before training
            args=args,
            data_collator=RecordBatches(self.records, data_collator),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            # DPOTrainer needs a tokenizer or processor (pad token, saving with the model); the
            # collator's tokenizer is the one that tokenized the records.
            processing_class=data_collator.tokenizer
            if processing_class is None
            else processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
            peft_config=peft_config,
        )
        route_step_through_forward(unwrap(self.model))

    # -- data: records instead of TRL's tokenized columns --------------------------------------

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name: str) -> Dataset:
        """Replaces TRL's tokenization: the records of ``dataset`` checked with the collator
        (``BadRecord`` names the first that cannot be trained on), kept in ``self.records``, and
        a Dataset of one column, RECORD, indexing them. An index dataset passes as it is."""
        if isinstance(dataset, Dataset) and dataset.column_names == [RECORD]:
            return dataset
        records = as_records(dataset, dataset_name)
        check_records(records, self.symmpo_collator, skip_bad=False)
        start = len(self.records)
        self.records.extend(records)
        return Dataset.from_dict({RECORD: list(range(start, len(self.records)))})

    def _set_signature_columns_if_needed(self):
        self._signature_columns = [RECORD]  # the column the Trainer must not remove

    # -- the reference: fixed before training ----------------------------------------------------

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        """Replaces TRL's reference pass (run by DPOTrainer's __init__ for the train and eval
        datasets, and by ``evaluate`` for a new one): the records' logps column where it fits,
        else one cached pass of the model as it is before training. Kept by idx; the dataset
        is returned as it is."""
        collator, average = self.symmpo_collator, self.symmpo_config.average_log_prob
        records = [self.records[i] for i in dataset[RECORD]]
        run = SimpleNamespace(  # what train.py's reference choice and cache key read
            average_log_prob=average,
            max_length=collator.max_length,
            seed=collator.seed,
            forward="naive",
            shared_attention=None,
            logits_path=False,
            liger=False,
        )
        fits, reason = record_logps_fit(run, records, collator)
        if fits:
            kinds = collator.objective.num_sequences
            column = ((r.ref_avg_logps if average else r.ref_logps)[:kinds] for r in records)
            values = {str(r.idx): v for r, v in zip(records, column, strict=True)}
            logger.info(f"{name}: reference log-probs from the data's logps column")
        else:
            if reason:
                logger.warning(reason)
            values = self._reference_pass(records, run, batch_size)
        clash = next((i for i, v in values.items() if self.ref_logps.get(i, v) != v), None)
        if clash is not None:
            raise ValueError(
                f"record idx={clash} is in two datasets with different reference log-probs: "
                "idx must name one example"
            )
        self.ref_logps.update(values)
        return dataset

    def _reference_pass(self, records, run, batch_size: int) -> dict[str, list[float]]:
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise NotImplementedError(
                "the reference pass scores the model before training, when DeepSpeed or FSDP "
                "has not gathered its parameters yet: give the records a logps column, or train "
                "with train.py, which runs the pass under DeepSpeed"
            )
        if self.state.global_step > 0 and not is_peft_model(self.model):
            raise ValueError("the reference pass needs the initial model; training has begun")
        model, collator = self.model, self.symmpo_collator
        # TRL hashed the weights (precompute_ref_log_probs): the cache key's model identity.
        config = unwrap(model).config.to_json_string()
        identity = {"weights": self._precompute_model_hash, "config": config}
        data = {"records": records_fingerprint(records)}
        precision = self.accelerator.mixed_precision
        key = cache_key(run, identity, data, collator, precision, model)
        folder = self.args.ref_cache_dir or os.path.join(self.args.output_dir, "ref_cache")
        # Under PEFT the adapters are disabled, as train.py's --lora does.
        lora = is_peft_model(model)
        reference = PrecomputedReference(folder, key, self._score, model, lora)
        accelerator = self.accelerator
        line = reference.prepare(
            records,
            collator,
            batch_size,
            accelerator.process_index,
            accelerator.num_processes,
            accelerator.wait_for_everyone,
        )
        logger.info(line)
        return {str(r.idx): reference.cache.values[str(r.idx)] for r in records}

    def _score(self, model, batch: dict) -> torch.Tensor:
        """(K*B,) sequence log-probs without gradient, under the training's autocast."""
        with self.accelerator.autocast():
            return score_batch(model, batch, self.symmpo_config.average_log_prob)

    def reference_logps(self, batch: dict) -> torch.Tensor:
        """(K*B,) kind-major float32 reference log-probs of a batch's records."""
        rows = [self.ref_logps[str(i)] for i in batch["idx"]]
        return torch.tensor(rows, dtype=torch.float32).t().reshape(-1)

    # -- the loss ----------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """symmpo's loss of the batch (a mean over its examples; as for DPOTrainer the Trainer
        divides it by the accumulation steps, ``num_items_in_batch`` is not used)."""
        ref_logps = self.reference_logps(inputs)
        objective, config = self.symmpo_objective, self.symmpo_config
        out = model(
            symmpo_step=lambda policy: compute_loss(policy, inputs, ref_logps, objective, config)
        )
        self._record_metrics(out)
        return (out.loss, out) if return_outputs else out.loss

    def _record_metrics(self, out) -> None:
        """The loss's metrics, averaged over processes, for ``log`` (DPOTrainer's metrics
        store); the loss itself is the Trainer's. Raises the fused kernels' input errors."""
        mode = "train" if self.model.training else "eval"
        metrics = {k: v for k, v in out.metrics().items() if k != "loss"}
        values = torch.tensor(list(metrics.values()), device=self.accelerator.device)
        values = self.accelerator.gather(values).view(-1, len(metrics)).mean(0).tolist()
        for name, value in zip(metrics, values, strict=True):
            self._metrics[mode][f"symmpo/{name}"].append(value)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # The loss only: the fused loss never builds the logits DPOTrainer's version returns.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


def route_step_through_forward(model) -> None:
    """Make ``model(symmpo_step=fn)`` return ``fn(model)``: symmpo's step (image features once,
    the language model, the loss) then runs inside the model's forward, under what the Trainer
    wraps around it (DDP's gradient synchronisation, accelerate's autocast). Other calls reach
    the forward as before."""
    inner = model.forward

    @functools.wraps(type(model).forward)  # keeps the signature generate() checks
    def forward(self, *args, symmpo_step=None, **kwargs):
        if symmpo_step is not None:
            return symmpo_step(self)
        return inner(*args, **kwargs)

    model.forward = types.MethodType(forward, model)
