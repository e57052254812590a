"""HallusionBench: qAcc, fAcc and aAcc from an LLM judge's verdicts, by the released evaluation.

The benchmark is yes/no questions in two categories: ``VD`` (visual dependent: the answer is
in the figure; figure 0 is the original, later figures are edited) and ``VS`` (visual
supplement: figure 0 is the question asked with no figure at all, ``visual_input`` "0", later
figures support or contradict common knowledge). Its official files, in ``benchmark_dir``:

- ``HallusionBench.json`` (the question file the released ``script/eval/eval_hallusion.sh``
  passes): a JSON list of ``{category, subcategory, visual_input, set_id, figure_id,
  sample_note, question_id, question, gt_answer_details, gt_answer, filename}``, every id a
  string, ``filename`` a path such as ``./VS/chart/0_1.png`` (null for no figure);
- the figures, under ``benchmark_dir`` at ``filename`` (or under ``hallusion_bench/``, the
  folder the figure archive unpacks to).

Questions, as the released ``muffin/eval/inference_hallusion_bench.py`` asks them: the prompt
is the ``question`` text alone, and a question gets its figure only where
``line['visual_input'] == 1``. The official file stores ``visual_input`` as a string, so that
test never holds and the released run asks every question without a figure. ``load_questions``
does the same by default (``images="released"``); ``images="benchmark"`` gives every question
whose ``visual_input`` is not "0" its figure, as the benchmark intends.

The answers file is the question file's entries, each with the model's text under
``model_prediction``: a JSON list, as the released inference writes it.

Scoring follows the released ``eval/hallusion_evaluation.py`` and ``eval/hallusion_bench_utils.py``:

- only ``VD`` and ``VS`` entries are scored;
- one judge request per answer, a single user message: ``CORRECTNESS_PROMPT`` (the released
  text, word for word, its mixed quotes included) followed by the question, the reference
  answer (``gt_answer_details``) and the model's answer. The released script's second round of
  requests (are two answers "same"?) feeds only its LH/VI/Mix breakdown, none of the three
  metrics here, and is not asked;
- a reply is read lower-cased: containing ``incorrect``, verdict "0"; else containing
  ``correct``, "1"; else "2" (unclear);
- an answer counts as correct when its verdict is "1", or, for a ``VS`` question of figure 0
  (asked with no figure), "1" or "2" (not knowing without the figure is right);
- ``hallusion_aacc``: correct answers over all answers; ``hallusion_qacc``: question groups
  (same ``category``, ``subcategory``, ``set_id``, ``question_id``: one question over all its
  figures) with every answer correct, over all groups; ``hallusion_facc``: figure groups (same
  ``category``, ``subcategory``, ``set_id``, ``figure_id``, leaving out ``VS`` figure 0) with
  every answer correct, over all figure groups. Group keys are the fields as strings joined by
  ``_``, as the released code builds them. Each is a percent rounded to 4 decimals, as the
  released leaderboard prints it.

The released evaluation has no rule-based route: ``score`` needs a judge (online, or offline
requests and replies files).
"""

from __future__ import annotations

import pathlib

from . import Question, check_keys, group_by, official_file, read_entries, write_json_list

QUESTION_FILE = "HallusionBench.json"
IMAGE_FOLDERS = ("", "hallusion_bench")
PREDICTION = "model_prediction"
IMAGE_MODES = ("released", "benchmark")

# The released judge request's text (eval/hallusion_bench_utils.py, evaluate_by_chatgpt),
# verbatim: the question, reference answer and prediction follow it.
CORRECTNESS_PROMPT = (
    "Imagine you are an intelligent teacher. Thoroughly read the question, reference answer "
    "and the prediction answer to ensure a clear understanding of the information provided. "
    "Assess the correctness of the predictions. "
    "If the prediction answer does not conflict with the reference answer, please generate "
    "\u201ccorrect\u201d. If the prediction answer conflict with the reference answer, please "
    "generate \u201cincorrect\u201d. If the prediction answer is unclear about the answer, "
    'please generate "unclear". \n\n Question:'
)


def question_file(benchmark_dir) -> pathlib.Path:
    """The official question file in ``benchmark_dir`` (or ``benchmark_dir`` itself, a file)."""
    return official_file(
        benchmark_dir,
        (QUESTION_FILE,),
        QUESTION_FILE,
        " (HallusionBench's question file, from its release)",
    )


def question_name(entry: dict) -> str:
    """One answer's key: category, subcategory, set, figure and question ids joined by ``_``."""
    parts = ("category", "subcategory", "set_id", "figure_id", "question_id")
    return "_".join(str(entry[part]) for part in parts)


def question_group(entry: dict) -> str:
    """The released qAcc group: one question over all figures of its set."""
    return "_".join(str(entry[p]) for p in ("category", "subcategory", "set_id", "question_id"))


def figure_group(entry: dict) -> str:
    """The released fAcc group: all questions about one figure."""
    return "_".join(str(entry[p]) for p in ("category", "subcategory", "set_id", "figure_id"))


def _figure(folder: pathlib.Path, filename) -> str | None:
    """The figure's path relative to ``folder``: ``filename`` without its leading ``./``, found
    directly under ``folder`` or under ``hallusion_bench/`` (the first that exists)."""
    if not filename:
        return None
    relative = str(filename)
    if relative.startswith("."):
        relative = relative[1:]
    relative = relative.lstrip("/")
    candidates = [pathlib.PurePosixPath(sub, relative).as_posix() for sub in IMAGE_FOLDERS]
    for candidate in candidates:
        if (folder / candidate).is_file():
            return candidate
    return candidates[0]


def load_questions(benchmark_dir, images: str = "released") -> list[Question]:
    """The official questions in file order, ids as ``question_name``; each carries its entry as
    ``fields``. ``images``: "released" attaches a figure where ``visual_input == 1`` holds for
    the value as stored (never, with the official file's strings), "benchmark" wherever
    ``visual_input`` is not "0"."""
    if images not in IMAGE_MODES:
        raise ValueError(f"images must be one of {IMAGE_MODES}, got {images!r}")
    path = question_file(benchmark_dir)
    folder = path.parent
    questions, seen = [], set()
    for entry in read_entries(path):
        name = question_name(entry)
        if name in seen:
            raise ValueError(f"{path} has question {name} twice")
        seen.add(name)
        if images == "released":
            asks_figure = entry.get("visual_input") == 1
        else:
            asks_figure = str(entry.get("visual_input")) != "0"
        image = _figure(folder, entry.get("filename")) if asks_figure else None
        if asks_figure and image is None:
            raise ValueError(
                f"question {name} has visual_input {entry['visual_input']!r} but no file"
            )
        questions.append(Question(id=name, image=image, prompt=entry["question"], fields=entry))
    return questions


def answer_row(question: Question, answer: str) -> dict:
    """The question's entry with the model's text under ``model_prediction``."""
    row = dict(question.fields)
    row[PREDICTION] = answer
    return row


#: The answers file the released evaluation reads: a JSON list of entries.
write_answers = write_json_list


def read_answers(answers) -> list[dict]:
    """Answer entries from ``answers``: entries already (copied), or a file of them."""
    rows = [dict(row) for row in read_entries(answers)]
    return check_keys(rows, (PREDICTION,), name=question_name)


def correctness_prompt(row: dict) -> str:
    """The released judge request's text for one answer."""
    return (
        CORRECTNESS_PROMPT
        + row["question"]
        + "\nReference answer: "
        + row["gt_answer_details"]
        + "\nPrediction answer:"
        + row[PREDICTION]
        + "\nOutput:"
    )


def judge_requests(rows: list[dict]) -> dict:
    """{question name: chat messages}: one user message per answer."""
    requests = {}
    for row in rows:
        name = question_name(row)
        if name in requests:
            raise ValueError(f"two answers to question {name}")
        requests[name] = [{"role": "user", "content": correctness_prompt(row)}]
    return requests


def parse_verdict(reply: str) -> str:
    """A judge reply's verdict as the released script reads it: "0" incorrect, "1" correct,
    "2" unclear."""
    text = reply.lower()
    if "incorrect" in text:
        return "0"
    if "correct" in text:
        return "1"
    return "2"


def is_correct(row: dict, verdict: str) -> int:
    """1 when the answer counts as correct: verdict "1", or "1"/"2" for a VS question asked
    with no figure (figure 0)."""
    if row["category"] == "VS" and int(row["figure_id"]) == 0:
        return int(int(verdict) in (1, 2))
    return int(int(verdict) == 1)


def _all_correct_share(groups: dict[str, list[int]]) -> float:
    if not groups:
        raise ValueError("no answers to score")
    return round(100 * sum(all(flags) for flags in groups.values()) / len(groups), 4)


def metrics(rows: list[dict], verdicts: list[str]) -> dict[str, float]:
    """aAcc, qAcc and fAcc (percent, 4 decimals) of scored entries and their verdicts."""
    flags = [is_correct(row, v) for row, v in zip(rows, verdicts, strict=True)]
    if not flags:
        raise ValueError("no VD or VS answers to score")
    questions = group_by(map(question_group, rows), flags)
    kept = [
        (row, flag)
        for row, flag in zip(rows, flags, strict=True)
        if not (row["category"] == "VS" and str(row["figure_id"]) == "0")
    ]
    figures = group_by((figure_group(row) for row, _ in kept), (flag for _, flag in kept))
    return {
        "hallusion_qacc": _all_correct_share(questions),
        "hallusion_facc": _all_correct_share(figures),
        "hallusion_aacc": round(100 * sum(flags) / len(flags), 4),
    }


def score(answers, benchmark_dir=None, judge=None) -> dict[str, float]:
    """``hallusion_qacc``, ``hallusion_facc`` and ``hallusion_aacc`` of an answers file (or its
    entries), each answer judged by ``judge`` (a ``symmpo.eval.judge.Judge``). The answers
    carry every field scoring needs; ``benchmark_dir`` is not read."""
    if judge is None:
        raise ValueError(
            "HallusionBench is scored by an LLM judge (the released evaluation has no rule-based "
            "route): give --judge_url/--judge_model, or judge requests/replies files"
        )
    rows = [row for row in read_answers(answers) if row["category"] in ("VD", "VS")]
    requests = judge_requests(rows)
    replies = judge.ask(requests)
    verdicts = [parse_verdict(replies[name]) for name in requests]
    return metrics(rows, verdicts)
