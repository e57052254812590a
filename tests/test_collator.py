"""symmpo.train.collator: the collated sequences decode to their records' responses."""

import torch

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
