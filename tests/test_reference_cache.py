"""symmpo.train.reference_cache: the on-disk reference log-probs resume after an interruption
and are keyed on a fingerprint of what they depend on, data contents included."""

import json
import os

import numpy as np
import torch
from PIL import Image

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


def _write_jsonl_data(folder, rows, seed: int) -> None:
    """A JSONL data set whose images are BMP files (uncompressed: the size depends on the
    dimensions only) of pixels drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    with (folder / "data.jsonl").open("w") as f:
        for row in rows:
            names = {}
            for k in (1, 2):
                name = f"images/{row['idx']}_{k}.bmp"
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    folder / name
                )
                names[f"image_path_{k}"] = name
            text = {k: row[k] for k in ("idx", "question", "resp_1_w", "resp_1_l", "resp_2_w")}
            f.write(json.dumps({**text, **names}) + "\n")


def test_cache_key_covers_the_image_contents_not_file_stats(tmp_path, tiny, make_collator):
    from symmpo.train.build import build_data
    from symmpo.train.cli import build_parser
    from symmpo.train.references import cache_key
    from symmpo.train.synthetic import make_synthetic_records

    (tmp_path / "images").mkdir()
    _write_jsonl_data(tmp_path, make_synthetic_records(4), seed=1)
    args = build_parser().parse_args(["--data", str(tmp_path / "data.jsonl"), "--heldout", "1"])
    collator = make_collator()

    def key() -> str:
        identity = build_data(args, collator).identity
        return cache_key(args, {"tiny": 0}, identity, collator, False, tiny[1])

    files = sorted(tmp_path.rglob("*.*"))
    stats = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in files}
    first = key()
    assert key() == first  # unchanged data, same key
    _write_jsonl_data(tmp_path, make_synthetic_records(4), seed=2)  # every image regenerated
    for path, (size, mtime) in stats.items():
        assert path.stat().st_size == size
        os.utime(path, ns=(mtime, mtime))
    assert {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in files} == stats
    assert key() != first  # same paths, sizes and mtimes, other pixels: another cache
