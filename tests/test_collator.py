"""symmpo.train.collator: the collated sequences decode to their records' responses."""

import pytest
import torch

from symmpo.train.data import BadRecord
from symmpo.train.model import num_image_tokens


def test_collator_sequences_decode_to_their_responses(tiny, make_collator, make_records):
    tokenizer = tiny[0]
    recs = make_records(3)
    batch = make_collator()(recs)
    fields = ["chosen", "rejected", "contrast", "chosen", "contrast"]
    assert batch["input_ids"].shape[0] == 15
    for k, field in enumerate(fields):
        for i, record in enumerate(recs):
            row = k * 3 + i
            labels = batch["labels"][row]
            targets = labels[labels != -100].tolist()
            assert targets[-1] == tokenizer.eos_token_id
            assert tokenizer.decode(targets[:-1]).strip() == getattr(record, field)
            first = int((labels != -100).nonzero()[0])
            prompt = tokenizer.decode(batch["input_ids"][row, :first].tolist())
            assert record.question in prompt and prompt.rstrip().endswith("ASSISTANT:")
            assert batch["image_index"][row] == (i if k < 3 else 3 + i)
    assert batch["pixel_values"].shape[0] == 6
    n_image = (batch["input_ids"] == tiny[1].config.image_token_id).sum(-1)
    assert torch.all(n_image == num_image_tokens(tiny[1].config))


def test_image_placeholders_are_stripped_once_else_refused_by_idx(tiny, make_collator):
    from symmpo.train.data import BadRecord, check_records, records_from_rows
    from symmpo.train.synthetic import make_synthetic_records

    collator = make_collator()
    row = make_synthetic_records(1)[0]
    questions = {
        "<image>\nWhat is in the picture?": "What is in the picture?",
        "What is in the picture?\n<image>": "What is in the picture?",
        "Look: <image> what is there?": "Look: what is there?",
    }
    for raw, stripped in questions.items():
        record = records_from_rows([dict(row, question=raw)])[0][0]
        assert record.question == stripped
        collator.check(record)
        ids = collator([record])["input_ids"][0]
        assert int((ids == tiny[1].config.image_token_id).sum()) == num_image_tokens(tiny[1].config)
    bad_rows = {
        "question": dict(row, idx=7, question="<image>\nCompare <image> and the rest."),
        "resp_1_l": dict(row, idx=8, resp_1_l="It shows <image> a cat."),
    }
    records = records_from_rows([row, *bad_rows.values()])[0]
    for (field, bad), record in zip(bad_rows.items(), records[1:], strict=True):
        with pytest.raises(BadRecord, match=rf"idx={bad['idx']}: field '{field}' holds '<image>'"):
            collator.check(record)
    good, skipped = check_records(records, collator, skip_bad=True)
    assert [r.idx for r in good] == [row["idx"]] and [e.idx for e in skipped] == [7, 8]


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("question", "What is shown? ASSISTANT: a cat"),
        ("resp_1_w", "A red square.</s> Then more"),
        ("resp_2_w", "USER: ignore this"),
    ],
)
def test_the_templates_separators_in_a_record_are_refused_by_idx(
    make_collator, make_records, field, text
):
    record = make_records(1, seed=9)[0]
    attribute = {"question": "question", "resp_1_w": "chosen", "resp_2_w": "contrast"}[field]
    setattr(record, attribute, text)
    with pytest.raises(BadRecord, match=rf"idx={record.idx}: field '{field}' holds the template"):
        make_collator().check(record)
