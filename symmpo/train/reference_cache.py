"""Reference log-probs computed once before training and kept on disk (``--ref precompute``).

The cache is one JSONL file per fingerprint, ``ref_logps-<fingerprint>.jsonl``, one line per
record: ``{"idx": ..., "logps": [K floats]}``. The fingerprint hashes the model's identity,
the data's content (``data.records_fingerprint``: every record's text and image bytes, not a
file's size and mtime), the prompt template, the image preprocessing, the max length and the
loss (``references.cache_key``): any change selects another file, so a stale cache is never
read. Lines are appended and flushed batch by batch:
an interrupted pass resumes where it stopped (a torn last line is ignored and recomputed).
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib

import torch
from tqdm.auto import tqdm


def fingerprint(**parts) -> str:
    """16 hex digits of the SHA-256 of ``parts`` as canonical JSON."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ReferenceCache:
    def __init__(self, folder: str | pathlib.Path, key: str):
        self.key = key
        self.path = pathlib.Path(folder) / f"ref_logps-{key}.jsonl"
        self.values: dict[str, list[float]] = {}
        if self.path.exists():
            with self.path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line torn by an interruption: recomputed below
                    self.values[str(row["idx"])] = row["logps"]

    def missing(self, records) -> list:
        return [r for r in records if str(r.idx) not in self.values]

    def fill(self, records, collator, score, batch_size: int) -> int:
        """Score the records not cached yet with ``score(batch) -> (K*B,)``; returns how many."""
        todo = self.missing(records)
        if not todo:
            return 0
        kinds = len(collator.sequences)
        with self._append() as f:
            for start in tqdm(range(0, len(todo), batch_size), desc="reference log-probs"):
                chunk = todo[start : start + batch_size]
                logps = score(collator(chunk)).float().cpu().view(kinds, len(chunk))
                for i, record in enumerate(chunk):
                    values = logps[:, i].tolist()
                    self.values[str(record.idx)] = values
                    f.write(json.dumps({"idx": record.idx, "logps": values}) + "\n")
                f.flush()
        return len(todo)

    def fill_sharded(self, records, collator, score, batch_size, rank, world, barrier) -> int:
        """``fill`` with the records split over ``world`` processes: each scores its share into
        a part file (resumable like the cache), then the main process appends the parts to the
        cache once and every process reloads it. Returns how many were computed in all."""
        if world == 1:
            return self.fill(records, collator, score, batch_size)
        todo = self.missing(records)
        share = todo[rank::world]
        # Every process runs the same number of forward passes (ZeRO-3 gathers parameters
        # collectively in each): padding passes re-score a record and discard it.
        passes = math.ceil(math.ceil(len(todo) / world) / batch_size)
        part = ReferenceCache(self.path.parent, self.key + f".rank{rank}-of-{world}")
        remaining = part.missing(share)
        kinds = len(collator.sequences)
        with part._append() as f:
            for i in range(passes):
                chunk = remaining[i * batch_size : (i + 1) * batch_size]
                if not chunk:
                    score(collator(todo[:1]))  # padding pass
                    continue
                logps = score(collator(chunk)).float().cpu().view(kinds, len(chunk))
                for j, record in enumerate(chunk):
                    f.write(json.dumps({"idx": record.idx, "logps": logps[:, j].tolist()}) + "\n")
                f.flush()
        barrier()
        if rank == 0:
            with self._append() as f:
                for r in range(world):
                    piece = ReferenceCache(self.path.parent, self.key + f".rank{r}-of-{world}")
                    for idx, values in piece.values.items():
                        if idx not in self.values:
                            f.write(json.dumps({"idx": idx, "logps": values}) + "\n")
                    if piece.path.exists():
                        piece.path.unlink()
        barrier()
        self.__init__(self.path.parent, self.key)
        if self.missing(records):
            raise RuntimeError(
                f"{self.path}: {len(self.missing(records))} records missing after the merge"
            )
        return len(todo)

    def _append(self):
        """The cache file opened for appending, a line torn by an interruption closed first."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open("rb") as f:
                f.seek(-1, 2)
                torn = f.read(1) != b"\n"
        handle = self.path.open("a", encoding="utf-8")
        if torn:
            handle.write("\n")
        return handle

    def lookup(self, idx_list) -> torch.Tensor:
        """(K*B,) kind-major reference log-probs of a batch's records."""
        rows = [self.values[str(i)] for i in idx_list]
        return torch.tensor(rows, dtype=torch.float32).t().reshape(-1)
