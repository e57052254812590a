"""Preference records: loading the released SymMPO layout (parquet), a JSONL layout, or the
embedded synthetic set, and checking every record before training.

A record has the released dataset's fields: ``idx, question, resp_1_w, resp_1_l, resp_2_w,
image_1, image_2`` (images as ``{"bytes": ..., "path": ...}``; ``image_path_1/2`` as
fallbacks), optionally ``logps``: reference log-probs of the five sequences in the order of
docs/math.md#the-five-sequences (1_w, 1_l, 1_2, 2_w, 2_2), as the released data writes them: a
JSON ``{"logps": [...]}`` (or the bare list) of 15 values, the five sums, the five averages, then
the five per-token lists; a list of just the five sums is read too. The JSONL layout uses the
same field names with images given as paths (``image_path_1``, ``image_path_2``, or
``image_1``/``image_2`` as strings), relative to the JSONL file.

LLaVA-style questions often hold the image placeholder (``"<image>\\nWhat is in the picture?"``):
one placeholder is removed when a row is read (leading, trailing or anywhere) since the prompt
template places the image itself; any other ``<image>`` in the question, or one in an answer, is
refused by the collator's check (BadRecord naming the idx and field).

Images are decoded to 8-bit RGB (``to_rgb``): 16-bit greyscale (modes ``I;16*`` and ``I``) is
rescaled to 8 bits (v / 257, rounded) rather than clipped; floating-point images (mode ``F``,
range unknown) and integer images outside 0..65535 are refused; transparency is dropped as
PIL's ``convert("RGB")`` (and LLaVA's loaders) do: the colour stored under a pixel shows.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pathlib
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

REQUIRED_TEXT = ("question", "resp_1_w", "resp_1_l", "resp_2_w")
IMAGE_PLACEHOLDER = "<image>"


class BadRecord(ValueError):
    """A record that cannot be trained on; the message names its idx and the field."""

    def __init__(self, idx, field_name: str, problem: str):
        super().__init__(f"record idx={idx}: field {field_name!r} {problem}")
        self.idx, self.field, self.problem = idx, field_name, problem


@dataclass
class PreferenceRecord:
    """One example: question x, image m and contrastive image m', y_w, y_l for m, y_w' for m'."""

    idx: object
    question: str
    chosen: str  # resp_1_w: y_w, preferred on m
    rejected: str  # resp_1_l: y_l, hallucinated on m
    contrast: str  # resp_2_w: y_w', preferred on m'
    image: object  # encoded image: {"bytes", "path"} dict, a path, or a PIL image
    contrast_image: object
    ref_logps: list[float] | None = None  # logps: the five sums
    ref_avg_logps: list[float] | None = None  # logps: the five averages (15-value form only)
    base_dir: pathlib.Path | None = None
    extra: dict = field(default_factory=dict)

    def load_image(self, which: str = "image") -> Image.Image:
        """Decode ``image`` or ``contrast_image`` to RGB (BadRecord if it cannot be read)."""
        source = getattr(self, which)
        name = "image_1" if which == "image" else "image_2"
        return decode_image(source, self.idx, name, self.base_dir)


def decode_image(source, idx, name: str, base_dir=None, verify_only: bool = False):
    try:
        if isinstance(source, Image.Image):
            return to_rgb(source, idx, name)
        if isinstance(source, dict):
            if source.get("bytes"):
                image = Image.open(io.BytesIO(source["bytes"]))
            elif source.get("path"):
                image = Image.open(_resolve(source["path"], base_dir))
            else:
                raise BadRecord(idx, name, "has neither bytes nor a path")
        elif isinstance(source, (str, pathlib.Path)):
            image = Image.open(_resolve(source, base_dir))
        else:
            raise BadRecord(idx, name, f"is not an image (got {type(source).__name__})")
        if verify_only:
            image.verify()
            return None
        return to_rgb(image, idx, name)
    except BadRecord:
        raise
    except Exception as error:  # PIL raises many kinds; all mean "unreadable"
        raise BadRecord(idx, name, f"is not a readable image ({error})") from error


def to_rgb(image: Image.Image, idx=None, name: str = "image") -> Image.Image:
    """8-bit RGB: 16-bit greyscale rescaled (not clipped), ``F`` refused, alpha dropped."""
    mode = image.mode
    if mode == "F":
        raise BadRecord(
            idx, name, "is a floating-point image (mode F, range unknown); save it 8-bit"
        )
    if mode == "I" or mode.startswith("I;"):
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise BadRecord(idx, name, f"has {mode} samples outside 0..65535; save it 8-bit")
        image = Image.fromarray(((values + 128) // 257).astype(np.uint8), mode="L")
    elif mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns on P -> RGB with transparency; same pixels
    return image if image.mode == "RGB" else image.convert("RGB")


def image_digest(source, base_dir=None) -> bytes:
    """SHA-256 of an image as stored: its bytes, the file at its path (relative to
    ``base_dir``), or a PIL image's mode, size and pixels; of the error if unreadable."""
    digest = hashlib.sha256()
    try:
        if isinstance(source, Image.Image):
            digest.update(f"pil:{source.mode}:{source.size}:".encode())
            digest.update(source.tobytes())
        elif isinstance(source, dict) and source.get("bytes"):
            digest.update(b"bytes:")
            digest.update(source["bytes"])
        else:
            path = source.get("path") if isinstance(source, dict) else source
            with _resolve(path, base_dir).open("rb") as f:
                digest.update(b"file:")
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    except Exception as error:  # unreadable: the check refuses it; the key still differs
        digest.update(f"unreadable:{type(error).__name__}:{source!r}".encode())
    return digest.digest()


def records_fingerprint(records) -> str:
    """SHA-256 (hex) of what reference log-probs depend on in the data: for every record in
    order its idx, question, responses, logps and the bytes of both images (read once)."""
    digest = hashlib.sha256()
    for r in records:
        text = [str(r.idx), r.question, r.chosen, r.rejected, r.contrast]
        text += [r.ref_logps, r.ref_avg_logps]
        digest.update(json.dumps(text).encode() + b"\0")
        digest.update(image_digest(r.image, r.base_dir))
        digest.update(image_digest(r.contrast_image, r.base_dir))
    return digest.hexdigest()


def strip_image_placeholder(question: str) -> str:
    """The question without its first ``<image>`` (LLaVA-style data's placeholder; the
    template places the image itself): leading ``<image>\\n``, trailing ``\\n<image>`` or bare."""
    before, found, after = question.partition(IMAGE_PLACEHOLDER)
    if not found:
        return question
    if not before.strip():
        return after.lstrip()
    if not after.strip():
        return before.rstrip()
    gap = before[len(before.rstrip()) :] + after[: len(after) - len(after.lstrip())]
    return before.rstrip() + ("\n" if "\n" in gap else " " if gap else "") + after.lstrip()


def _resolve(path, base_dir) -> pathlib.Path:
    path = pathlib.Path(path)
    return path if path.is_absolute() or base_dir is None else pathlib.Path(base_dir) / path


def record_from_row(row: dict, base_dir=None) -> PreferenceRecord:
    """A PreferenceRecord from a row of either layout; BadRecord names a missing/empty field."""
    idx = row.get("idx")
    if idx is None:
        raise BadRecord(None, "idx", "is missing")
    text = {}
    for name in REQUIRED_TEXT:
        value = row.get(name)
        if value is None:
            raise BadRecord(idx, name, "is missing")
        if name == "question" and isinstance(value, str):
            value = strip_image_placeholder(value)
        if not isinstance(value, str) or not value.strip():
            raise BadRecord(idx, name, "is empty" if isinstance(value, str) else "is not text")
        text[name] = value
    images = []
    for k in (1, 2):
        source = row.get(f"image_{k}") or row.get(f"image_path_{k}")
        if isinstance(source, dict) and not (source.get("bytes") or source.get("path")):
            source = row.get(f"image_path_{k}") or source
        if not source:
            raise BadRecord(idx, f"image_{k}", f"is missing (and so is image_path_{k})")
        images.append(source)
    return PreferenceRecord(
        idx=idx,
        question=text["question"],
        chosen=text["resp_1_w"],
        rejected=text["resp_1_l"],
        contrast=text["resp_2_w"],
        image=images[0],
        contrast_image=images[1],
        **_parse_logps(row.get("logps"), idx),
        base_dir=base_dir,
        extra={k: v for k, v in row.items() if k.startswith("scene_")},
    )


def _parse_logps(value, idx) -> dict:
    """``ref_logps`` (5 sums) and ``ref_avg_logps`` (5 averages or None) from a ``logps`` value:
    the released 15 values (in a ``{"logps": ...}`` object or bare, JSON text or parsed) or 5
    sums. BadRecord for anything else or a non-finite sum or average."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, dict):
        if "logps" not in value:
            raise BadRecord(idx, "logps", f"is an object without a 'logps' key: {sorted(value)}")
        value = value["logps"]
    value = value.tolist() if hasattr(value, "tolist") else list(value)
    if len(value) == 15:
        sums, averages = _numbers(value[:5], idx), _numbers(value[5:10], idx)
    elif len(value) == 5:
        sums, averages = _numbers(value, idx), None
    else:
        raise BadRecord(
            idx,
            "logps",
            f"holds {len(value)} values; expected the released 15 (5 sums, 5 averages, 5 "
            "per-token lists) or 5 sums",
        )
    return {"ref_logps": sums, "ref_avg_logps": averages}


def _numbers(values, idx) -> list[float]:
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != 5 or not all(math.isfinite(v) for v in numbers):
        raise BadRecord(idx, "logps", f"must hold 5 finite sums and averages, got {values}")
    return numbers


def load_records(source: str, skip_bad: bool = False, split: str = "train"):
    """(records, skipped) from a parquet file or folder, a .jsonl file or a cached hub data set
    (``symmpo.train.data_source``). Rows are checked field by field: a bad one raises
    BadRecord, or with ``skip_bad`` is counted in skipped."""
    from .data_source import read_rows

    rows, base = read_rows(source, split)
    records, skipped = [], []
    for row in rows:
        try:
            records.append(record_from_row(row, base))
        except BadRecord as error:
            if not skip_bad:
                raise
            skipped.append(error)
    return records, skipped


def records_from_rows(rows: list[dict], skip_bad: bool = False):
    """(records, skipped) from in-memory rows (the embedded set)."""
    records, skipped = [], []
    for row in rows:
        try:
            records.append(record_from_row(row))
        except BadRecord as error:
            if not skip_bad:
                raise
            skipped.append(error)
    return records, skipped


def default_heldout(total: int) -> int:
    """Records set apart for evaluation when --heldout is not given: a tenth of the data, at
    most 64, and none for fewer than 10 records."""
    return min(64, total // 10)


def split_heldout(records: list, heldout: int | None, seed: int):
    """(train, heldout): a seeded random ``heldout`` records set apart (default:
    ``default_heldout``). Holding out every record is refused (UsageError naming --heldout)."""
    heldout = default_heldout(len(records)) if heldout is None else heldout
    if heldout >= len(records):
        from .cli import UsageError

        raise UsageError(
            f"--heldout {heldout}: the data holds {len(records)} records, so none would be left "
            "for training; allowed: fewer than the records (default: a tenth, at most 64)"
        )
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held = set(order[:heldout])
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]


def corrupt_image(image: Image.Image, idx, seed: int) -> Image.Image:
    """mDPO's corrupted image: a random resized crop keeping 1 to 20 % of the area, drawn from
    (seed, idx) so every pass over the example (policy, reference) sees the same crop."""
    rng = random.Random(f"{seed}:{idx}")
    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(0.01, 0.2)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return image.crop((left, top, left + w, top + h)).resize((width, height))
    side = max(1, int(math.sqrt(area * 0.1)))
    return image.crop((0, 0, side, side)).resize((width, height))


def check_records(records, collator, skip_bad: bool, seen: set | None = None):
    """(good, bad): every record must have a unique idx, tokenize with a target left and have
    readable images, else stop (BadRecord names the idx and field) or, with ``skip_bad``, skip
    and count. ``seen`` carries the idx values of records checked before (another split)."""
    good, bad = [], []
    seen = set() if seen is None else seen
    for record in records:
        try:
            if str(record.idx) in seen:
                problem = "is not unique (the reference cache and the logs key records by idx)"
                raise BadRecord(record.idx, "idx", problem)
            seen.add(str(record.idx))
            collator.check(record)
            good.append(record)
        except BadRecord as error:
            if not skip_bad:
                raise
            bad.append(error)
    return good, bad


def batch_records(records: list, step: int, global_batch: int, seed: int) -> list:
    """The examples of optimizer step ``step``: epochs are seeded permutations cut into global
    batches, so any step is reached without replaying the earlier ones (what makes --resume
    exact), and the order does not depend on the process count."""
    import torch

    per_epoch = len(records) // global_batch
    epoch, offset = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(len(records), generator=generator)
    return [records[i] for i in order[offset * global_batch : (offset + 1) * global_batch].tolist()]
