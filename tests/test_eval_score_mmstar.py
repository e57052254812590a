"""MMStar scorer: the released parquet reading, answers file and the released two-step letter
matching (merge normalisation, then eval_mmstar's rules), with hand-computed expectations."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from symmpo.eval.scorers import mmstar


def png(color):
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), color).save(buffer, format="PNG")
    return buffer.getvalue()


# (prediction, gold letter, category, l2 category): each prediction's fate by the released
# pipeline is worked out in the comments of test_scores_by_released_matching.
CASES = [
    ("The answer is (B).", "B", "coarse perception", "image emotion"),
    ("B", "B", "coarse perception", "image emotion"),
    ("b) cat", "B", "coarse perception", "image scene and topic"),
    ("A or C", "C", "math", "geometry"),
    ("", "A", "math", "geometry"),
    ("", "D", "math", "statistical reasoning"),
    ("The answer is B", "A", "science & technology", "biology & chemistry & physics"),
    ("Option C", "C", "science & technology", "biology & chemistry & physics"),
]


@pytest.fixture
def bench(tmp_path):
    folder = tmp_path / "mmstar"
    folder.mkdir()
    rows = [
        {
            "index": i,
            "question": f"Question {i}?\nOptions: A: w, B: x, C: y, D: z",
            "image": {"bytes": png((i * 20, 0, 0)), "path": None},
            "answer": gold,
            "category": category,
            "l2_category": l2,
            "meta_info": {"source": f"bench{i}", "split": "val", "image_path": f"{i}.png"},
        }
        for i, (_, gold, category, l2) in enumerate(CASES)
    ]
    pq.write_table(pa.Table.from_pylist(rows), folder / "mmstar.parquet")
    return folder


def test_questions_as_released_inference_asks(bench):
    questions = mmstar.load_questions(bench)
    assert [q.id for q in questions] == list(range(len(CASES)))
    first = questions[0]
    assert (
        first.prompt
        == "Question 0?\nOptions: A: w, B: x, C: y, D: z\nAnswer the question directly."
    )
    assert Image.open(io.BytesIO(first.image)).size == (2, 2)
    assert first.fields == {
        "index": 0,
        "question": "Question 0?\nOptions: A: w, B: x, C: y, D: z",
        "answer": "B",
        "category": "coarse perception",
        "l2_category": "image emotion",
        "bench": "bench0",
    }


def write(bench, tmp_path, predictions):
    questions = mmstar.load_questions(bench)
    rows = [mmstar.answer_row(q, p) for q, p in zip(questions, predictions, strict=True)]
    path = tmp_path / "answers.json"
    mmstar.write_answers(rows, path)
    return path


def test_answers_file_format(bench, tmp_path):
    path = write(bench, tmp_path, [c[0] for c in CASES])
    rows = json.loads(path.read_text())
    assert list(rows[3]) == [
        "index",
        "question",
        "answer",
        "category",
        "l2_category",
        "bench",
        "prediction",
    ]
    assert rows[3]["prediction"] == "A or C"


def test_merge_step_letters():
    # First of a/b/c/d in the lower-cased text, upper-cased; "A" when there is none.
    assert mmstar.released_letter("The answer is (B).") == "A"  # the "a" of "answer"
    assert mmstar.released_letter("B") == "B"
    assert mmstar.released_letter("b) cat") == "B"
    assert mmstar.released_letter("A or C") == "A"
    assert mmstar.released_letter("C and A") == "C"
    assert mmstar.released_letter("") == "A"
    assert mmstar.released_letter("Option C") == "C"  # o, p, t, i, o, n, space, then c
    assert mmstar.released_letter("Yes!") == "A"  # no a-d at all
    assert mmstar.released_letter("D") == "D"  # a merged letter stays as it is


def test_eval_step_rules_on_raw_text():
    # eval_mmstar.py alone: first character, "(" then letter, "option " then letter,
    # "the answer is " then letter; an empty prediction is wrong.
    assert mmstar.released_match("b) cat", "B")
    assert mmstar.released_match("(B) cat", "B")
    assert mmstar.released_match("Option c", "C")
    assert mmstar.released_match("The answer is D", "D")
    assert not mmstar.released_match("The answer is (B).", "B")  # 15th character is "("
    assert not mmstar.released_match("", "A")
    assert not mmstar.released_match("(", "A")
    assert mmstar.released_match("  a\n", " A ")  # both lower-cased and stripped


def test_scores_by_released_matching(bench, tmp_path):
    path = write(bench, tmp_path, [c[0] for c in CASES])
    result = mmstar.score(path, bench)
    # Merge step, then first-character match with the gold letter:
    #   0 "The answer is (B)." -> "A" vs B: wrong      (coarse perception)
    #   1 "B"                  -> "B" vs B: right      (coarse perception)
    #   2 "b) cat"             -> "B" vs B: right      (coarse perception)
    #   3 "A or C"             -> "A" vs C: wrong      (math)
    #   4 ""                   -> "A" vs A: right      (math)
    #   5 ""                   -> "A" vs D: wrong      (math)
    #   6 "The answer is B"    -> "A" vs A: right      (science & technology)
    #   7 "Option C"           -> "C" vs C: right      (science & technology)
    # overall 5/8; coarse perception 2/3; math 1/3; science & technology 2/2
    assert result == {
        "mmstar_overall": 5 / 8,
        "mmstar_coarse_perception": 2 / 3,
        "mmstar_science_&_technology": 2 / 2,
        "mmstar_math": 1 / 3,
    }


def test_merged_file_scores_the_same(bench, tmp_path):
    raw = mmstar.read_answers(write(bench, tmp_path, [c[0] for c in CASES]))
    merged = [{**row, "prediction": mmstar.released_letter(row["prediction"])} for row in raw]
    assert mmstar.score(merged) == mmstar.score(raw)


def test_unofficial_category_rejected(bench, tmp_path):
    rows = mmstar.read_answers(write(bench, tmp_path, [c[0] for c in CASES]))
    rows[0]["l2_category"] = "geometry"  # not under coarse perception
    with pytest.raises(ValueError, match="official MMStar category"):
        mmstar.score(rows)
