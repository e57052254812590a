"""AMBER (Wang et al., 2023, "An LLM-free Multi-dimensional Benchmark for MLLMs Hallucination
Evaluation"), scored by the benchmark's own algorithm as the released SymMPO pipeline runs it.

The benchmark folder holds AMBER's ``data`` files: ``annotations.json``, ``relation.json``,
``safe_words.txt`` and the query files (``query_all.json``, ``query_generative.json``,
``query_discriminative.json``, ``query_discriminative-{existence,attribute,relation}.json``),
either at its top or under ``query/`` (or under ``data/`` and ``data/query/``, as in AMBER's
repository), and the images under ``image/`` (or ``images/``).

Questions (``load_questions``): each query file entry ``{"id", "image", "query"}``; ids 1-1004 are
the generative task ("Describe this image."), the rest yes/no questions.

Answers file (``answer_row``, ``write_answers``): a JSON list of ``{"id": int, "response": str}``,
the file AMBER's scorer reads. A yes/no answer is written as the released pipeline's merge step
writes it, reduced to ``"Yes"`` or ``"No"`` (``normalize_yes_no``), because the official scorer
compares the response with those two strings exactly.

Metrics (``score``), in percent and rounded to one decimal as the official script prints them;
every denominator starts at 0.001, as AMBER's ``metrics.txt`` initialises it.

Discriminative task: the response (after ``normalize_yes_no``) is right when it equals ``"Yes"``
for a "yes" question or ``"No"`` for a "no" question. "No" is the positive label:
accuracy = right / questions; precision = "no" questions answered ``"No"`` / answers ``"No"``;
recall = "no" questions answered ``"No"`` / "no" questions; F1 = 2PR / (P + R + 0.0001) from the
rounded P and R.

Generative task, per answer:

1. the answer's nouns (tokens tagged NN*, lemmatised as nouns with WordNet; case is kept, so a
   capitalised "Dogs" stays "Dogs"), keeping those in AMBER's vocabulary (every key and every
   related word of ``relation.json``), every occurrence in order;
2. the truth targets: the related words of each truth object (``relation.json``), then the truth
   objects themselves, each target pointing at its truth object's position; the hallu targets
   likewise; a noun marks the object of the *first* target it matches, so of two identical truth
   entries only the first can be covered;
3. each noun: a safe word (``safe_words.txt``) is skipped, though it still counts as a mention;
   one equal to a truth target covers that truth object; otherwise one equal to a hallu target
   marks that hallu object, then the first hallu target spaCy finds similar (> 0.8) marks its
   object, and the first truth target spaCy finds similar covers its object; a noun that covered
   nothing is a hallucination (whether or not it is on the hallu list).

CHAIR = hallucinated nouns / nouns; Cover = covered truth objects / truth objects; Hal = answers
with a hallucinated noun / answers; Cog = marked hallu objects / hallu objects.

Without nltk (its tokenizer, tagger and WordNet data) or spaCy (``en_core_web_lg``), the
generative task is approximated (``amber_words``: a rule-based noun filter, suffix-rule lemmas,
identical-word similarity), said once on stderr and by ``"amber_approximate": True``. The
approximation can change all four generative metrics; the discriminative metrics are exact
either way.

The word handling (tokenising, the noun filter, lemmas, loading nltk and spaCy) is in
``amber_words``; this module holds the benchmark interface and the metrics.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from collections.abc import Mapping

from . import Question, first_file, read_json
from .amber_words import language_tools

#: AMBER's generative questions are ids 1..1004; the yes/no questions follow.
LAST_GENERATIVE_ID = 1004

#: Every count's denominator starts here (AMBER's metrics.txt), so an empty task scores 0.
DENOMINATOR_START = 0.001

QUERY_FILES = (
    "query_all.json",
    "query_generative.json",
    "query_discriminative.json",
    "query_discriminative-existence.json",
    "query_discriminative-attribute.json",
    "query_discriminative-relation.json",
)

# -- files -----------------------------------------------------------------------------------


def find_file(benchmark_dir, name: str) -> pathlib.Path | None:
    """``name`` in the benchmark folder: at its top, under ``query/``, ``data/`` or
    ``data/query/``; None when absent."""
    return first_file(benchmark_dir, (name,), ("", "query", "data", "data/query"))


def _require(benchmark_dir, name: str) -> pathlib.Path:
    path = find_file(benchmark_dir, name)
    if path is None:
        raise FileNotFoundError(f"AMBER: no {name} in {benchmark_dir} (nor its query/ or data/)")
    return path


def _image_folder(benchmark_dir) -> str:
    base = pathlib.Path(benchmark_dir)
    for name in ("image", "images", "data/image", "data/images"):
        if (base / name).is_dir():
            return name
    return "image"


def read_annotations(benchmark_dir) -> dict[int, dict]:
    """``annotations.json`` by id: ``{"id", "type", "truth", "hallu"}`` for a generative entry,
    ``{"id", "type", "truth": "yes" | "no"}`` for a yes/no question."""
    notes = json.loads(_require(benchmark_dir, "annotations.json").read_text(encoding="utf-8"))
    return {int(note["id"]): note for note in notes}


def read_relation(benchmark_dir) -> dict[str, list[str]]:
    """``relation.json``: {object: [words that also name it]}."""
    return json.loads(_require(benchmark_dir, "relation.json").read_text(encoding="utf-8"))


def read_safe_words(benchmark_dir) -> list[str]:
    """``safe_words.txt``: one word a line (the official reader keeps every line, blank ones
    too)."""
    text = _require(benchmark_dir, "safe_words.txt").read_text(encoding="utf-8")
    return text.split("\n")


def _task_of(note_or_id) -> str:
    if isinstance(note_or_id, Mapping):
        return "generative" if note_or_id.get("type") == "generative" else "discriminative"
    return "generative" if int(note_or_id) <= LAST_GENERATIVE_ID else "discriminative"


# -- questions and answers ------------------------------------------------------------------


def load_questions(benchmark_dir, task: str = "all") -> list[Question]:
    """AMBER's questions, in file order: ``query_all.json`` when present, else
    ``query_generative.json`` then the discriminative files. ``task``: "all", "generative" or
    "discriminative" (the released SymMPO script asks the discriminative questions only). Each
    question's image is its file under the benchmark's image folder (a path relative to the
    benchmark folder); ``fields["task"]`` is "generative" or "discriminative" (from
    ``annotations.json`` when present, else from the file or the id)."""
    if task not in ("all", "generative", "discriminative"):
        raise ValueError(f"task must be all, generative or discriminative, got {task!r}")
    notes_path = find_file(benchmark_dir, "annotations.json")
    notes = read_annotations(benchmark_dir) if notes_path else {}
    sources = ["query_all.json"] if find_file(benchmark_dir, "query_all.json") else []
    if not sources:
        sources = [name for name in QUERY_FILES[1:] if find_file(benchmark_dir, name)]
        if "query_discriminative.json" in sources:  # the dimension files are parts of it
            sources = [name for name in sources if name in QUERY_FILES[1:3]]
    if not sources:
        raise FileNotFoundError(
            f"AMBER: no query file ({', '.join(QUERY_FILES)}) in {benchmark_dir}"
        )
    images = _image_folder(benchmark_dir)
    questions, seen = [], set()
    for name in sources:
        entries = json.loads(find_file(benchmark_dir, name).read_text(encoding="utf-8"))
        for entry in entries:
            qid = int(entry["id"])
            if qid in seen:
                continue
            seen.add(qid)
            if qid in notes:
                kind = _task_of(notes[qid])
            elif name == "query_generative.json":
                kind = "generative"
            elif name.startswith("query_discriminative"):
                kind = "discriminative"
            else:
                kind = _task_of(qid)
            if task in ("all", kind):
                image = f"{images}/{entry['image']}"
                questions.append(Question(qid, image, entry["query"], {"task": kind}))
    return questions


def normalize_yes_no(text: str) -> str:
    """A yes/no answer as the released pipeline's merge step reduces it before AMBER's scorer:
    lower-cased, a text under 8 characters is "Yes" if it holds "yes", else "No" if it holds
    "no", else "Yes"; a longer one is looked at in its first 5 characters, then its last 5, then
    all of it, "yes" before "no" each time (substrings: "not", "nothing" and "know" hold "no"),
    and is kept as it is when neither appears (the scorer then counts it wrong)."""
    low = text.lower()
    if len(low) < 8:
        return "Yes" if "yes" in low else "No" if "no" in low else "Yes"
    for part in (low[:5], low[-5:], low):
        if "yes" in part:
            return "Yes"
        if "no" in part:
            return "No"
    return text


def answer_row(question: Question, answer: str) -> dict:
    """``{"id", "response"}``: the answer as is for a generative question, reduced to "Yes" /
    "No" (``normalize_yes_no``) for a yes/no question."""
    kind = question.fields.get("task") or _task_of(question.id)
    response = normalize_yes_no(answer) if kind == "discriminative" else answer
    return {"id": int(question.id), "response": response}


def write_answers(rows, path) -> None:
    """The answers file: one JSON list of ``{"id", "response"}``."""
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump([{"id": row["id"], "response": row["response"]} for row in rows], f)
        f.write("\n")


def read_answers(answers) -> list[dict]:
    """Answer rows from a path (a JSON list, one JSON object, or JSON lines), a list of
    ``{"id", "response"}`` rows, or a mapping {id: response}."""
    if isinstance(answers, (str, os.PathLike)):
        answers = read_json(answers)
        if isinstance(answers, dict) and "id" in answers:
            answers = [answers]
    if isinstance(answers, Mapping):
        return [{"id": int(k), "response": v} for k, v in answers.items()]
    return [{"id": int(row["id"]), "response": row["response"]} for row in answers]


# -- scoring ---------------------------------------------------------------------------------


def _targets(objects: list[str], relation: Mapping) -> list[tuple[str, int]]:
    """(word, object position): every object's related words, then the objects themselves (an
    object missing from ``relation.json``, which stops the official script, has none)."""
    related = [(word, i) for i, obj in enumerate(objects) for word in relation.get(obj, [])]
    return related + [(obj, i) for i, obj in enumerate(objects)]


def _first(targets, match) -> int | None:
    return next((i for word, i in targets if match(word)), None)


def generative_counts(nouns, note: Mapping, relation, vocabulary, safe_words, similar) -> dict:
    """One answer's counts: ``mentions`` (its vocabulary nouns), ``hallucinated`` (those that
    covered nothing), ``covered`` / ``truth`` (truth objects) and ``marked`` / ``hallu`` (hallu
    objects), by AMBER's rules (module docstring)."""
    mentions = [noun for noun in nouns if noun in vocabulary]
    truth, hallu = list(note["truth"]), list(note["hallu"])
    truth_targets, hallu_targets = _targets(truth, relation), _targets(hallu, relation)
    covered, marked = [False] * len(truth), [False] * len(hallu)
    hallucinated = 0
    for noun in mentions:
        if noun in safe_words:
            continue
        i = _first(truth_targets, noun.__eq__)
        if i is not None:
            covered[i] = True
            continue
        i = _first(hallu_targets, noun.__eq__)
        if i is not None:
            marked[i] = True
        i = _first(hallu_targets, lambda word, noun=noun: similar(noun, word))
        if i is not None:
            marked[i] = True
        i = _first(truth_targets, lambda word, noun=noun: similar(noun, word))
        if i is not None:
            covered[i] = True
            continue
        hallucinated += 1
    return {
        "mentions": len(mentions),
        "hallucinated": hallucinated,
        "covered": sum(covered),
        "truth": len(truth),
        "marked": sum(marked),
        "hallu": len(hallu),
    }


def _percent(part, whole) -> float:
    return round(part / (DENOMINATOR_START + whole) * 100, 1)


def _f1(precision: float, recall: float) -> float:
    p, r = precision / 100, recall / 100
    return round(2 * p * r / (p + r + 0.0001) * 100, 1)


def score(answers, benchmark_dir, judge=None, approximate: bool | None = None) -> dict:
    """AMBER's metrics of ``answers`` (an answers file, its rows, or {id: response}) against the
    benchmark folder's annotations, in percent rounded to one decimal (module docstring).

    Discriminative answers give ``amber_accuracy``, ``amber_precision``, ``amber_recall`` and
    ``amber_f1``; generative ones ``amber_chair``, ``amber_cover``, ``amber_hal`` and
    ``amber_cog`` (a task without answers has no keys); ``amber_generative`` and
    ``amber_discriminative`` count the answers. ``amber_approximate`` says whether nltk or spaCy
    was approximated (then also said on stderr): ``approximate`` None uses them when they load,
    True always approximates, False requires them. ``judge`` is unused (AMBER needs none)."""
    del judge
    rows = read_answers(answers)
    notes = read_annotations(benchmark_dir)
    missing = [row["id"] for row in rows if row["id"] not in notes]
    if missing:
        raise KeyError(f"AMBER: answers with no annotation: ids {missing[:10]}")
    generative = [row for row in rows if _task_of(notes[row["id"]]) == "generative"]
    discriminative = [row for row in rows if _task_of(notes[row["id"]]) == "discriminative"]
    result: dict = {
        "amber_generative": len(generative),
        "amber_discriminative": len(discriminative),
    }

    if discriminative:
        right = truth_no = no_right = said_no = said_no_right = 0
        for row in discriminative:
            response = normalize_yes_no(row["response"])
            is_yes = notes[row["id"]]["truth"] == "yes"
            right += response == ("Yes" if is_yes else "No")
            if not is_yes:
                truth_no += 1
                no_right += response == "No"
            if response == "No":
                said_no += 1
                said_no_right += not is_yes
        precision, recall = _percent(said_no_right, said_no), _percent(no_right, truth_no)
        result |= {
            "amber_accuracy": _percent(right, len(discriminative)),
            "amber_precision": precision,
            "amber_recall": recall,
            "amber_f1": _f1(precision, recall),
        }

    approximate_used = False
    if generative:
        tools = language_tools(approximate)
        if approximate is False and tools.approximations:
            raise RuntimeError(f"AMBER: nltk/spaCy needed: {'; '.join(tools.approximations)}")
        relation = read_relation(benchmark_dir)
        vocabulary = frozenset(relation) | {word for words in relation.values() for word in words}
        safe_words = frozenset(read_safe_words(benchmark_dir))
        totals = dict.fromkeys(
            ("mentions", "hallucinated", "covered", "truth", "marked", "hallu"), 0
        )
        clean = 0
        for row in generative:
            nouns = tools.nouns(row["response"], vocabulary)
            counts = generative_counts(
                nouns, notes[row["id"]], relation, vocabulary, safe_words, tools.similar
            )
            for key in totals:
                totals[key] += counts[key]
            clean += counts["hallucinated"] == 0
        result |= {
            "amber_chair": _percent(totals["hallucinated"], totals["mentions"]),
            "amber_cover": _percent(totals["covered"], totals["truth"]),
            "amber_hal": round(100 - clean / (DENOMINATOR_START + len(generative)) * 100, 1),
            "amber_cog": _percent(totals["marked"], totals["hallu"]),
        }
        if tools.approximations:
            approximate_used = True
            print(
                "AMBER: approximating the official generative scoring ("
                + "; ".join(tools.approximations)
                + "): CHAIR, Cover, Hal and Cog may differ; the yes/no metrics are exact",
                file=sys.stderr,
            )
    result["amber_approximate"] = approximate_used
    return result
