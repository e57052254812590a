"""MMStar: multiple-choice accuracy by the released option-letter matching.

The benchmark is 1500 four-option questions, 250 in each of six categories (three
``l2_category`` each). Its official file, in ``benchmark_dir``: ``mmstar.parquet`` (the Hugging
Face release, the ``val`` split the released ``muffin/eval/inference_mmstar_bench.py`` loads),
rows ``{index, question, image: {bytes, path}, answer, category, l2_category, meta_info:
{source, split, image_path}}``; ``question`` already lists the options and ``answer`` is their
letter.

Questions, as the released inference asks them: the image, and ``question`` followed by
``"\\nAnswer the question directly."``. The answers file is what that inference writes, a JSON
list of ``{index, question, answer, category, l2_category, bench (meta_info.source),
prediction}``, ``prediction`` the model's text.

Scoring follows the released ``script/eval/eval_mmstar.sh``, which runs two steps:

1. ``utils/merge_json_data.py --answers-type abcd`` (not in the SymMPO repository; the TPO
   repository's, which SymMPO extends) replaces each prediction by a single letter: the first
   character of the lower-cased text that is one of ``a b c d``, upper-cased (so "The answer
   is (B)." becomes "A", from "answer"), or "A" when there is none (an empty answer too);
2. ``eval/eval_mmstar.py`` compares the lower-cased, stripped answer with the lower-cased,
   stripped prediction: correct when it equals the first character, or the second after a
   ``(``, or the eighth after ``option ``, or the fifteenth after ``the answer is ``; an empty
   prediction is wrong. After step 1 only the first rule can apply.

``score`` runs both (step 1 leaves an already merged letter unchanged, so a merged file scores
the same). ``mmstar_overall`` is the share of correct answers and ``mmstar_<category>`` (the
category lower-cased, spaces as ``_``) each category's, as fractions from 0 to 1, unrounded, as
the released script writes them. The released script divides by 1500 and 250, the official
counts; here the divisors are the numbers of answers scored, the same on the full benchmark.
Categories and their ``l2_category`` must be the official ones (the released script fails on
any other).
"""

from __future__ import annotations

import pathlib

from . import (
    Question,
    category_key,
    check_keys,
    first_file,
    group_means,
    read_entries,
    write_json_list,
)

QUESTION_FILE = "mmstar.parquet"
PROMPT_SUFFIX = "\nAnswer the question directly."
FIELDS = ("index", "question", "answer", "category", "l2_category", "bench")

#: The official categories and their l2 categories (eval/eval_mmstar.py).
CATEGORIES = {
    "coarse perception": (
        "image scene and topic",
        "image style & quality",
        "image emotion",
    ),
    "fine-grained perception": ("object counting", "recognition", "localization"),
    "instance reasoning": (
        "single-instance reasoning",
        "cross-instance attribute reasoning",
        "cross-instance relation reasoning",
    ),
    "logical reasoning": (
        "code & sequence reasoning",
        "diagram reasoning",
        "common reasoning",
    ),
    "science & technology": (
        "biology & chemistry & physics",
        "electronics & energy & mechanical eng.",
        "geography & earth science & agriculture",
    ),
    "math": (
        "geometry",
        "numeric commonsense and calculation",
        "statistical reasoning",
    ),
}


def question_files(benchmark_dir) -> list[pathlib.Path]:
    """The parquet file(s) of the official release: ``benchmark_dir`` itself, its
    ``mmstar.parquet``, or else every ``.parquet`` under it."""
    path = pathlib.Path(benchmark_dir)
    if path.is_file():
        return [path]
    official = first_file(path, (QUESTION_FILE,))
    found = [official] if official else sorted(path.rglob("*.parquet"))
    if not found:
        raise FileNotFoundError(f"no {QUESTION_FILE} in {path} (MMStar's Hugging Face release)")
    return found


def read_rows(benchmark_dir) -> list[dict]:
    """The official rows, in file order."""
    import pyarrow.parquet as pq

    rows = []
    for path in question_files(benchmark_dir):
        rows += pq.read_table(path).to_pylist()
    return rows


def _image(value):
    """Image bytes from a Hugging Face image cell ({bytes, path}) or raw bytes."""
    if isinstance(value, dict):
        return value.get("bytes") or value.get("path")
    return value


def load_questions(benchmark_dir) -> list[Question]:
    """The official questions, ids their ``index``; ``fields`` are the answers file's entries
    without the prediction."""
    questions = []
    for row in read_rows(benchmark_dir):
        meta = row.get("meta_info") or {}
        fields = {
            "index": row["index"],
            "question": row["question"],
            "answer": row["answer"],
            "category": row["category"],
            "l2_category": row["l2_category"],
            "bench": meta.get("source"),
        }
        questions.append(
            Question(
                id=row["index"],
                image=_image(row["image"]),
                prompt=row["question"] + PROMPT_SUFFIX,
                fields=fields,
            )
        )
    return questions


def answer_row(question: Question, answer: str) -> dict:
    """One entry of the answers file: the question's fields and the model's text as
    ``prediction``."""
    row = {key: question.fields.get(key) for key in FIELDS}
    row["prediction"] = answer
    return row


#: The answers file the released scripts read: a JSON list of entries.
write_answers = write_json_list


def read_answers(answers) -> list[dict]:
    """Answer entries from ``answers``: entries already, or a JSON (or JSONL) file of them."""
    return check_keys(read_entries(answers), ("prediction", "answer", "category", "l2_category"))


def released_letter(text: str) -> str:
    """Step 1, the merge script: the first of a/b/c/d in the lower-cased text, upper-cased;
    "A" when there is none."""
    for char in text.lower():
        if char in "abcd":
            return char.upper()
    return "A"


def released_match(prediction, answer) -> bool:
    """Step 2, eval_mmstar.py: does ``prediction`` give ``answer`` by the released rules?"""
    answer = str(answer).lower().strip().replace("\n", " ")
    predict = str(prediction).lower().strip().replace("\n", " ")
    if not predict:
        return False  # the released script's predict[0] fails and the answer counts as wrong
    if answer == predict[0]:
        return True
    rules = (("(", 1), ("option ", 7), ("the answer is ", 14))
    for prefix, at in rules:
        if predict.startswith(prefix) and len(predict) > at and answer == predict[at]:
            return True
    return False


def is_correct(row: dict) -> bool:
    """The released pipeline's verdict on one entry: merge to a letter, then match."""
    return released_match(released_letter(str(row["prediction"])), row["answer"])


def score(answers, benchmark_dir=None, judge=None) -> dict[str, float]:
    """``mmstar_overall`` and ``mmstar_<category>`` (fractions) of an answers file (or its
    entries). Rule-based: ``judge`` and ``benchmark_dir`` are not used."""
    rows = read_answers(answers)
    if not rows:
        raise ValueError("no answers to score")
    for row in rows:
        category, l2 = str(row["category"]), str(row["l2_category"])
        if l2 not in CATEGORIES.get(category, ()):
            raise ValueError(
                f"answer {row.get('index')!r}: ({category!r}, {l2!r}) is not an official MMStar "
                "category and l2_category"
            )
    flags = [int(is_correct(row)) for row in rows]
    means = group_means((str(row["category"]) for row in rows), flags)
    out = {"mmstar_overall": sum(flags) / len(flags)}
    for category in CATEGORIES:
        if category in means:
            out[f"mmstar_{category_key(category)}"] = means[category]
    return out
