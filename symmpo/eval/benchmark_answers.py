"""Answers to a benchmark's official questions, written in the file its official scorer reads.

    python -m symmpo.evaluate generate --benchmark amber --benchmark_dir AMBER/ \\
        --answers amber_answers.json (--checkpoint CKPT | --model_name_or_path M)

As the released evaluation scripts run them: the released ``llava_v1`` conversation, images
padded to a square with the processor's mean colour before the processor (``pad``), beam search
with 3 beams and up to 1024 new tokens, temperature 0 (greedy beams) except AMBER's 0.7
(sampled beams) — each a flag. Prompts go through ``generate`` in batches (left-padded); a
text-only question (HallusionBench has some) is asked without an image, as the released script
asks it.

Resumable: every finished batch is appended to ``<answers>.partial.jsonl`` (``{"id", "answer"}``
lines, flushed and fsynced); a rerun keeps those answers and asks only the rest. When every
question has its answer the official file is written (through a temporary file and a rename)
and the partial file removed.
"""

from __future__ import annotations

import io
import json
import os
import pathlib

import torch
from PIL import Image
from tqdm import tqdm

from ..train.model import unwrap
from ..train.tokenizer import readable_decode
from .scorers import Question, scorer

#: The released evaluation scripts' sampling: (temperature, beams, max new tokens) per benchmark.
RELEASED_GENERATION = {
    "amber": (0.7, 3, 1024),
    "objhal": (0.0, 3, 1024),
    "mmhal": (0.0, 3, 1024),
    "hallusion": (0.0, 3, 1024),
    "mmstar": (0.0, 3, 1024),
}


def load_image(source, base: pathlib.Path) -> Image.Image | None:
    """A question's image as RGB: a PIL image, raw bytes, or a path relative to ``base``."""
    if source is None:
        return None
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, (bytes, bytearray)):
        return Image.open(io.BytesIO(source)).convert("RGB")
    path = pathlib.Path(source)
    return Image.open(path if path.is_absolute() else base / path).convert("RGB")


def read_partial(path: pathlib.Path) -> dict:
    """{id: answer} already written (a torn last line, from a killed run, is ignored)."""
    answers = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            answers[json.dumps(row["id"])] = row["answer"]
    return answers


@torch.no_grad()
def answer_batch(model, collator, questions: list[Question], images, settings) -> list[str]:
    """Answers to questions that all have an image, or all have none (one generate call)."""
    llava = unwrap(model)
    device = llava.lm_head.weight.device
    has_image = images[0] is not None
    prompts = [collator.encode_prompt(q.prompt, image=has_image) for q in questions]
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), collator.pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):  # left padding: every prompt ends at the same column
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    temperature, beams, max_new_tokens = settings
    extra = {"temperature": temperature} if temperature > 0 else {}
    if has_image:
        extra["pixel_values"] = collator.pixel_values(images).to(device, llava.dtype)
    out = llava.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max_new_tokens,
        num_beams=beams,
        do_sample=temperature > 0,
        pad_token_id=collator.pad_id,
        eos_token_id=collator.tokenizer.eos_token_id,
        **extra,
    )
    return [readable_decode(collator.tokenizer, row[width:].tolist()).strip() for row in out]


def generate_benchmark_answers(
    model,
    collator,
    benchmark: str,
    benchmark_dir,
    answers_path,
    batch_size: int = 8,
    settings: tuple | None = None,
    limit: int | None = None,
) -> pathlib.Path:
    """Answer ``benchmark``'s questions (the first ``limit``) and write the official answers
    file; resumes from ``<answers>.partial.jsonl``. ``settings``: (temperature, beams, max new
    tokens), the released scripts' by default."""
    module = scorer(benchmark)
    base = pathlib.Path(benchmark_dir)
    questions = module.load_questions(base)[:limit]
    settings = settings or RELEASED_GENERATION[benchmark]
    answers_path = pathlib.Path(answers_path)
    partial = answers_path.with_name(answers_path.name + ".partial.jsonl")
    done = read_partial(partial)
    todo = [q for q in questions if json.dumps(q.id) not in done]
    with open(partial, "a", encoding="utf-8") as log, tqdm(total=len(todo), desc=benchmark) as bar:
        for with_image in (True, False):
            group = [q for q in todo if (q.image is not None) == with_image]
            for start in range(0, len(group), batch_size):
                batch = group[start : start + batch_size]
                images = [load_image(q.image, base) for q in batch]
                for question, answer in zip(
                    batch, answer_batch(model, collator, batch, images, settings), strict=True
                ):
                    done[json.dumps(question.id)] = answer
                    log.write(json.dumps({"id": question.id, "answer": answer}) + "\n")
                log.flush()
                os.fsync(log.fileno())
                bar.update(len(batch))
    rows = [module.answer_row(q, done[json.dumps(q.id)]) for q in questions]
    temporary = answers_path.with_name(f".{answers_path.name}.tmp")
    module.write_answers(rows, temporary)
    os.replace(temporary, answers_path)
    partial.unlink()
    return answers_path
