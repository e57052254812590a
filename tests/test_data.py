"""symmpo.train.data: a bad record is refused with its idx and the field at fault."""

import pytest

from symmpo.train.data import BadRecord, records_from_rows
from symmpo.train.synthetic import make_synthetic_records


def test_bad_records_name_idx_and_field(make_collator, make_records):
    collator = make_collator()
    rows = make_synthetic_records(2)
    missing = dict(rows[0])
    del missing["resp_1_l"]
    with pytest.raises(BadRecord, match=r"idx=0: field 'resp_1_l' is missing"):
        records_from_rows([missing])
    empty = dict(rows[0], resp_2_w="   ")
    with pytest.raises(BadRecord, match=r"idx=0: field 'resp_2_w' is empty"):
        records_from_rows([empty])
    broken = dict(rows[1], image_2={"bytes": b"not a png", "path": None})
    record = records_from_rows([broken])[0][0]
    with pytest.raises(BadRecord, match=r"idx=1: field 'image_2' is not a readable image"):
        collator.check(record)
    short = make_collator(max_length=10)
    with pytest.raises(BadRecord, match=r"idx=0: field 'resp_1_w' has no target token left"):
        short.check(make_records(1)[0])
    kept, skipped = records_from_rows([missing, rows[1]], skip_bad=True)
    assert len(kept) == 1 and len(skipped) == 1
