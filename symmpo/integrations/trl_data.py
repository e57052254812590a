"""The data side of ``symmpo.integrations.trl``: records from what a TRL user passes, the
collator built from a LLaVA processor, and the data collator TRL's dataloaders call. None of it
imports TRL."""

from __future__ import annotations

import sys

from datasets import Dataset, Image

from ..train.collator import PreferenceCollator
from ..train.data import PreferenceRecord, records_from_rows
from ..train.model import num_image_tokens, unwrap

#: The one column of the datasets TRL is given: each row's position in ``trainer.records``.
RECORD = "symmpo_record"


class RecordBatches:
    """The data collator TRL's dataloaders call: rows of the index datasets ({RECORD: i}) to
    symmpo's batch of those records."""

    def __init__(self, records: list[PreferenceRecord], collator: PreferenceCollator):
        self.records, self.collator = records, collator

    def __call__(self, rows: list[dict]) -> dict:
        return self.collator([self.records[row[RECORD]] for row in rows])


def collator_from_processor(model, processor, args) -> PreferenceCollator:
    """The collator train.py builds by default (released llava_v1 template, crop images) from a
    LLaVA processor's tokenizer and image processor."""
    tokenizer = getattr(processor, "tokenizer", None)
    image_processor = getattr(processor, "image_processor", None)
    if tokenizer is None or image_processor is None:
        raise ValueError(
            "without a data_collator, processing_class must be the model's processor (with a "
            "tokenizer and an image_processor, as LlavaProcessor); or pass a symmpo "
            "PreferenceCollator as data_collator"
        )
    config = unwrap(model).config
    return PreferenceCollator(
        tokenizer,
        image_processor,
        config.image_token_id,
        num_image_tokens(config),
        max_length=sys.maxsize if args.max_length is None else args.max_length,
        objective=args.loss,
        seed=args.seed,
    )


def as_records(data, name: str) -> list[PreferenceRecord]:
    """A list of PreferenceRecord from records, rows of the released layout, or a
    datasets.Dataset of such rows (its images kept encoded until a batch needs them)."""
    if isinstance(data, Dataset):
        for column, feature in data.features.items():
            if isinstance(feature, Image) and feature.decode:
                data = data.cast_column(column, Image(decode=False))
        data = data.to_list()
    if isinstance(data, (list, tuple)) and data:
        if all(isinstance(r, PreferenceRecord) for r in data):
            return list(data)
        if all(isinstance(r, dict) for r in data):
            return records_from_rows(list(data))[0]
    if isinstance(data, (list, tuple)) and not data:
        raise ValueError(f"{name} dataset is empty")
    raise TypeError(
        f"{name} dataset: expected PreferenceRecords, rows of the released layout (dicts) or a "
        f"datasets.Dataset of them, got {type(data).__name__}"
    )
