"""symmpo.train.reference_cache: the on-disk reference log-probs resume after an interruption
and are keyed on a fingerprint of what they depend on."""

import torch

from symmpo.train.forwards import score_batch
from symmpo.train.reference_cache import ReferenceCache, fingerprint


def test_reference_cache_resumes_and_keys_on_fingerprint(
    tmp_path, tiny, make_collator, make_records
):
    collator = make_collator()
    recs = make_records(5, seed=9)
    calls = []

    def score(batch):
        calls.append(len(batch["idx"]))
        return score_batch(tiny[1], batch, average=False)

    key = fingerprint(model="m", max_length=2048)
    assert key != fingerprint(model="m", max_length=1024)
    cache = ReferenceCache(tmp_path, key)
    assert cache.fill(recs[:3], collator, score, batch_size=2) == 3
    lines = cache.path.read_text().splitlines()
    cache.path.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])  # interrupted mid-line
    resumed = ReferenceCache(tmp_path, key)
    assert resumed.fill(recs, collator, score, batch_size=2) == 3  # idx 2 (torn), 3, 4
    again = ReferenceCache(tmp_path, key)
    assert again.missing(recs) == []
    expected = score_batch(tiny[1], collator(recs), average=False)
    torch.testing.assert_close(again.lookup([r.idx for r in recs]), expected, rtol=1e-5, atol=1e-5)
