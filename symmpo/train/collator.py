"""Batches of kind-major sequences for one policy pass, each distinct image once.

The sequences and their order are the objective's (``symmpo.train.objectives``; for SymMPO the
five of docs/math.md#the-five-sequences). Each is a conversation of the run's template
(``symmpo.train.templates``: the released ``llava_v1`` by default, or the checkpoint processor's
chat template), which also says which tokens are targets. The one image token is expanded to the
vision tower's number of patch features (label -100); then the sequence is cut to ``max_length``
tokens as the released training does (its model cuts the expanded sequence): the answer's tail
goes, never the image tokens. Sequences are right-padded.

Refused by idx (BadRecord): an empty answer, text holding the template's separators (the
released preprocessing would mask every label), a sequence the template cannot split into
prompt and answer, one with no target left after truncation, and an ``<image>`` in a question
(one is removed when the row is read: ``data.strip_image_placeholder``) or in an answer.
"""

from __future__ import annotations

import torch

from .data import BadRecord, PreferenceRecord, corrupt_image
from .images import IMAGE_ASPECT_RATIOS, pixel_values
from .objectives import Objective, get_objective
from .templates import IMAGE, TemplateError, get_template

RESPONSE_FIELDS = {"chosen": "resp_1_w", "rejected": "resp_1_l", "contrast": "resp_2_w"}


class PreferenceCollator:
    """records -> {input_ids, attention_mask, labels (K*B, L), pixel_values (S*B, 3, H, W),
    image_index (K*B,), idx, ref_logps and ref_avg_logps (K*B,) or None, n_tokens, shared} for
    the K sequences and S image slots of one example that ``objective`` (an Objective or a
    ``--loss`` name) needs. ``template``: a ``--template`` name or a template object."""

    def __init__(
        self,
        tokenizer,
        image_processor,
        image_token_id: int,
        num_image_tokens: int,
        max_length: int = 2048,
        objective: str | Objective = "symmpo",
        seed: int = 0,
        template="llava_v1",
        image_aspect_ratio: str = "crop",
    ):
        self.objective = get_objective(objective)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        if image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
            raise ValueError(
                f"image_aspect_ratio must be one of {IMAGE_ASPECT_RATIOS}, "
                f"got {image_aspect_ratio!r}"
            )
        self.image_aspect_ratio = image_aspect_ratio  # symmpo.train.images: crop or pad
        self.image_token_id = image_token_id
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.seed = seed
        self.template = get_template(template, tokenizer) if isinstance(template, str) else template
        self.sequences = self.objective.sequences
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else tokenizer.eos_token_id

    # -- one sequence -------------------------------------------------------------------------

    def expand_image(self, ids: list[int], labels: list[int] | None = None):
        """``ids`` (and ``labels``) with the one image token repeated num_image_tokens times."""
        where = [i for i, t in enumerate(ids) if t == self.image_token_id]
        if len(where) != 1:
            raise TemplateError(f"tokenizes to {len(where)} image tokens, not 1")
        i, n = where[0], self.num_image_tokens
        ids = ids[:i] + [self.image_token_id] * n + ids[i + 1 :]
        if labels is None:
            return ids
        return ids, labels[:i] + [-100] * n + labels[i + 1 :]

    def encode_prompt(self, question: str, image: bool = True) -> list[int]:
        """The generation prompt's ids, the image token expanded (``image=False``: a
        text-only question)."""
        ids = self.template.prompt_ids(self.tokenizer, question, self.image_token_id, image)
        return self.expand_image(ids) if image else ids

    def encode(self, record: PreferenceRecord, response: str) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of one sequence, cut to max_length; BadRecord when the template
        cannot score it or no target token survives the cut."""
        field = RESPONSE_FIELDS[response]
        try:
            ids, labels = self.template.encode(
                self.tokenizer, record.question, getattr(record, response), self.image_token_id
            )
            ids, labels = self.expand_image(ids, labels)
        except TemplateError as error:
            problem = f"under --template {self.template.name}: {error}"
            raise BadRecord(record.idx, field, problem) from error
        first = next((i for i, label in enumerate(labels) if label != -100), len(labels))
        if first >= self.max_length:
            raise BadRecord(
                record.idx,
                field,
                f"has no target token left: the prompt alone is {first} tokens "
                f"(max_length {self.max_length}); image tokens are never truncated",
            )
        return ids[: self.max_length], labels[: self.max_length]

    def check(self, record: PreferenceRecord) -> None:
        """Raise BadRecord if any of the record's sequences or images cannot be used."""
        fields = {"question": record.question}
        fields.update({RESPONSE_FIELDS[r]: getattr(record, r) for r, _ in self.sequences})
        for name, text in fields.items():
            if name != "question" and not text.strip():
                raise BadRecord(record.idx, name, "is empty: there is no answer to score")
            if IMAGE in text:
                problem = (
                    f"holds {IMAGE!r} beyond the one placeholder removed when the row is read "
                    "(the template places the one image itself)"
                    if name == "question"
                    else f"holds {IMAGE!r} (an answer cannot place an image)"
                )
                raise BadRecord(record.idx, name, problem)
            for separator in self.template.separators:
                if separator in text:
                    problem = (
                        f"holds the template's separator {separator!r}: the released "
                        "preprocessing would mask every label of such a sequence"
                    )
                    raise BadRecord(record.idx, name, problem)
        for response, _ in self.sequences:
            self.encode(record, response)
        record.load_image("image")
        if self.objective.second_image == "contrast":
            record.load_image("contrast_image")

    def preprocessing_identity(self) -> dict:
        """What the sequences and pixels depend on besides the tokenizer and the data: the
        template, the image processor's config and the aspect-ratio rule (for cache keys)."""
        to_json = getattr(self.image_processor, "to_json_string", None)
        return {
            "template": self.template.identity(),
            "image_processor": to_json() if to_json else repr(self.image_processor),
            "image_aspect_ratio": self.image_aspect_ratio,
        }

    # -- a batch ------------------------------------------------------------------------------

    def pixel_values(self, images: list) -> torch.Tensor:
        """(N, 3, H, W) pixel values of PIL images, preprocessed as ``image_aspect_ratio``."""
        return pixel_values(self.image_processor, images, self.image_aspect_ratio)

    def images(self, records: list[PreferenceRecord]) -> list:
        """Slot-major images: slot 0 of every example, then slot 1 (if the loss has one)."""
        images = [r.load_image("image") for r in records]
        if self.objective.second_image is None:
            return images
        if self.objective.second_image == "corrupted":
            return images + [
                corrupt_image(im, r.idx, self.seed) for im, r in zip(images, records, strict=True)
            ]
        return images + [r.load_image("contrast_image") for r in records]

    def pad_right(self, encoded: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``encoded``: (ids, labels) pairs -> (input_ids, labels, attention_mask), each (N, T)
        long, right-padded to the longest (pad id, -100, 0)."""
        length = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(encoded), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(encoded), length), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
        for row, (ids, labs) in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(labs)] = torch.tensor(labs)
            attention_mask[row, : len(ids)] = 1
        return input_ids, labels, attention_mask

    def __call__(self, records: list[PreferenceRecord]) -> dict:
        batch = len(records)
        encoded, image_index = [], []
        for response, slot in self.sequences:  # kind-major: all examples of kind 0 first
            for i, record in enumerate(records):
                encoded.append(self.encode(record, response))
                image_index.append(slot * batch + i)
        input_ids, labels, attention_mask = self.pad_right(encoded)
        pixel_values = self.pixel_values(self.images(records))
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "pixel_values": pixel_values,
            "image_index": torch.tensor(image_index),
            "idx": [r.idx for r in records],
            "ref_logps": self._ref_logps(records),
            "ref_avg_logps": self._ref_logps(records, averages=True),
            "n_tokens": int(attention_mask.sum()),
            "shared": self.shared_layout(records),
        }

    def shared_layout(self, records: list[PreferenceRecord]) -> dict:
        """The same batch packed for the shared-prefix forward: one row per (image slot,
        example) holding its prefix (image + prompt, P_i tokens) once, then the responses of
        every sequence that uses it, each continuing at position P_i.

        Returns ids, positions, segments (S*B, L) (segment 0: prefix, k + 1: the response of
        sequence kind k, -1: padding), and for the K*B sequences the packed row and columns of
        their positions [P_i - 1, response...] (gather_rows (K*B,), gather_cols (K*B, 1 + R))
        with labels aligned to them (the first answer token is predicted from position P_i - 1,
        the prefix's last token, which every sequence of that prefix shares).
        """
        batch = len(records)
        slots = self.objective.num_images
        rows = [[] for _ in range(slots * batch)]
        positions = [[] for _ in range(slots * batch)]
        segments = [[] for _ in range(slots * batch)]
        gather = [None] * (len(self.sequences) * batch)
        for i, record in enumerate(records):
            encoded = [self.encode(record, response) for response, _ in self.sequences]
            prompt = self.shared_prompt(record, encoded)
            for slot in range(slots):
                row = slot * batch + i
                rows[row] += prompt
                positions[row] += list(range(len(prompt)))
                segments[row] += [0] * len(prompt)
            for k, ((ids, _), (_, slot)) in enumerate(zip(encoded, self.sequences, strict=True)):
                row = slot * batch + i
                answer = ids[len(prompt) :]
                start = len(rows[row])
                rows[row] += answer
                positions[row] += list(range(len(prompt), len(prompt) + len(answer)))
                segments[row] += [k + 1] * len(answer)
                cols = [len(prompt) - 1, *range(start, start + len(answer))]
                gather[k * batch + i] = (row, cols, [-100, *answer])
        length = max(len(r) for r in rows)
        span = max(len(cols) for _, cols, _ in gather)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        pos = torch.zeros((len(rows), length), dtype=torch.long)
        seg = torch.full((len(rows), length), -1, dtype=torch.long)
        for r, (toks, p, g) in enumerate(zip(rows, positions, segments, strict=True)):
            ids[r, : len(toks)] = torch.tensor(toks)
            pos[r, : len(p)] = torch.tensor(p)
            seg[r, : len(g)] = torch.tensor(g)
        gather_cols = torch.zeros((len(gather), span), dtype=torch.long)
        labels = torch.full((len(gather), span), -100, dtype=torch.long)
        for j, (_, cols, labs) in enumerate(gather):
            gather_cols[j, : len(cols)] = torch.tensor(cols)
            labels[j, : len(labs)] = torch.tensor(labs)
        return {
            "input_ids": ids,
            "position_ids": pos,
            "segments": seg,
            "gather_rows": torch.tensor([row for row, _, _ in gather]),
            "gather_cols": gather_cols,
            "labels": labels,
            "n_tokens": int((seg >= 0).sum()),
        }

    def shared_prompt(self, record: PreferenceRecord, encoded: list) -> list[int]:
        """The prefix every sequence of ``record`` shares: its tokens before the first target
        (BadRecord if an answer changes how they tokenize, or scores a prompt token)."""
        ids, labels = encoded[0]
        prompt = ids[: next(i for i, label in enumerate(labels) if label != -100)]
        for (response, _), (ids, labels) in zip(self.sequences, encoded, strict=True):
            answer = labels[len(prompt) :]
            if ids[: len(prompt)] != prompt or -100 in answer or labels[len(prompt) - 1] != -100:
                raise BadRecord(
                    record.idx,
                    RESPONSE_FIELDS[response],
                    "changes how the shared prompt tokenizes, so --forward shared cannot "
                    "share it; use --forward naive",
                )
        return prompt

    def _ref_logps(self, records, averages: bool = False):
        """(K*B,) kind-major reference log-probs from the records' ``logps`` (its sums, or its
        averages), else None."""
        values = [r.ref_avg_logps if averages else r.ref_logps for r in records]
        if not self.objective.record_logps or any(v is None for v in values):
            return None
        kinds = range(len(self.sequences))  # symmpo: all five; dpo: the first two
        return torch.tensor([v[k] for k in kinds for v in values])
