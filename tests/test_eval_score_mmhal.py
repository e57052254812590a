"""MMHal-Bench: questions, the answers file, the judge requests and Score/Hall by hand."""

from __future__ import annotations

import base64
import json
import pathlib

import pytest

from symmpo.eval.judge import Judge, JudgeError
from symmpo.eval.scorers import mmhal, scorer

# MMHal-Bench's eight question types, in the order its template cycles through them
TYPES = (
    "attribute",
    "adversarial",
    "comparison",
    "counting",
    "relation",
    "environment",
    "holistic",
    "other",
)
TOPICS = ("Wild Animals", "Food")


def template_entries() -> list[dict]:
    """16 template entries in the official layout: 2 topics x 8 types, types cycling fastest."""
    entries = []
    for t, topic in enumerate(TOPICS):
        for k, kind in enumerate(TYPES):
            i = 8 * t + k
            entries.append(
                {
                    "question_type": kind,
                    "question_topic": topic,
                    "image_id": f"id{i:02d}",
                    "image_src": f"https://farm.example/photos/{i:02d}_pic.jpg",
                    "image_content": ["Cat", "Lynx"] if i == 0 else [f"Object{i}", "Tree"],
                    "question": f"Question {i} about the {kind}?",
                    "gt_answer": f"Truth {i}.",
                    "model_answer": "",
                }
            )
    return entries


@pytest.fixture
def bench(tmp_path) -> pathlib.Path:
    folder = tmp_path / "mmhal"
    (folder / "images").mkdir(parents=True)
    entries = template_entries()
    (folder / "response_template.json").write_text(json.dumps(entries, indent=4))
    for i, entry in enumerate(entries):
        (folder / "images" / entry["image_src"].rsplit("/", 1)[1]).write_bytes(b"img%d" % i)
    return folder


def test_load_questions_reads_the_template_and_its_images(bench):
    questions = mmhal.load_questions(bench)
    entries = template_entries()
    assert [q.id for q in questions] == list(range(16))
    assert questions[3].prompt == "Question 3 about the counting?"
    assert questions[3].fields == entries[3]
    assert questions[3].image == bench / "images" / "03_pic.jpg"
    assert scorer("mmhal") is mmhal


def test_load_questions_falls_back_to_the_symmpo_question_file(bench):
    for image in (bench / "images").iterdir():
        image.unlink()
    with pytest.raises(FileNotFoundError, match="no image"):
        mmhal.load_questions(bench)
    # SymMPO's mmhal-bench_with_image.jsonl: one line per template entry, base64 pictures
    lines = [
        json.dumps({"question": e["question"], "image": base64.b64encode(b"pic%d" % i).decode()})
        for i, e in enumerate(template_entries())
    ]
    (bench / "mmhal-bench_with_image.jsonl").write_text("\n".join(lines) + "\n")
    # the template under SymMPO's name is found too
    (bench / "response_template.json").rename(bench / "mmhal-bench_answer_template.json")
    questions = mmhal.load_questions(bench)
    assert questions[5].image == b"pic5"
    assert questions[5].fields["question_type"] == "environment"


def test_answer_rows_and_write_answers_round_trip(bench, tmp_path):
    questions = mmhal.load_questions(bench)
    # the released filler removes every "Assistant:" and strips the ends
    row = mmhal.answer_row(questions[0], "  Assistant: There are two cats. Überall.\n")
    assert row["model_answer"] == "There are two cats. Überall."
    # the official field order: that of the template entries above
    assert tuple(row) == mmhal.FIELDS == tuple(template_entries()[0])
    assert questions[0].fields["model_answer"] == ""  # the question is left as it was
    rows = [row] + [mmhal.answer_row(q, f"answer {q.id}") for q in questions[1:]]
    path = tmp_path / "out" / "answers.template.json"
    mmhal.write_answers(rows, path)
    text = path.read_text(encoding="utf-8")
    assert "Überall" in text  # ensure_ascii=False, as the released filler writes
    assert text.startswith('[\n    {\n        "question_type": "attribute",')  # indent 4
    again = json.loads(text)
    assert again == rows
    assert [list(r) for r in again] == [list(mmhal.FIELDS)] * 16
    assert mmhal.read_answers(path, bench) == rows


def test_the_judge_request_is_the_released_prompt_filled_in():
    row = {
        "image_content": ["Cat", "Lynx"],
        "question": "How many cats?",
        "gt_answer": "Two.",
        "model_answer": "One {cat}.",
    }
    assert mmhal.judge_requests([row]) == {
        0: [{"role": "user", "content": mmhal.judge_prompt(row)}]
    }
    text = mmhal.judge_prompt(row)
    assert text.startswith(
        "Please act as an impartial and objective judge and evaluate the quality of the "
        "response provided by a Large Multimodal Model (LMM) to the user question."
    )
    assert "so please be a bit more cautious during evalutation." in text  # sic
    assert (
        "- Rating: 6, very informative with good analysis or reasoning, no hallucination\n" in text
    )
    assert text.endswith(
        "- Rating: 0, not informative, with hallucination\n\n"
        "### Image Contents\nCat, Lynx\n\n"
        "### Question\nHow many cats?\n\n"
        "### Standard Human-Generated Answer\nTwo.\n\n"
        "### LMM Response to Evaluate\nOne {cat}.\n"
    )
    assert mmhal.PROMPT.count("{}") == 4 and mmhal.PROMPT.count("{") == 4


def test_parse_rating_as_the_released_scripts_do():
    assert mmhal.parse_rating("Fine.\nRating: 5, very informative, no hallucination") == 5
    assert mmhal.parse_rating("RATING: 4") == 4  # lower-cased first
    assert mmhal.parse_rating("Rating:\n2") == 2  # the second pass
    assert mmhal.parse_rating("Rating: \n6") == 6  # the second pass, with a space
    assert mmhal.parse_rating("Rating: 10") == 1  # "rating: 1" occurs in it
    assert mmhal.parse_rating("Rating: 3 or Rating: 4") == 0  # two ratings
    assert mmhal.parse_rating("Score: 5") == 0  # none
    assert mmhal.parse_rating("Rating:5") == 0  # no space, no newline: none
    assert mmhal.parse_rating("") == 0


# (reply, the rating the released parser reads from it), for questions 0..15; question i is
# of type TYPES[i % 8]
REPLIES = [
    ("The answer is detailed and correct.\nRating: 6, very informative", 6),  # attribute
    ("It invents a dog.\nRating: 2, very informative, with hallucination", 2),  # adversarial
    ("RATING: 4", 4),  # comparison; lower-cased before matching
    ("It miscounts.\nRating:\n1", 1),  # counting; found by the second pass
    ("Rating: 5", 5),  # relation
    ("I cannot judge this response.", 0),  # environment; no rating at all -> 0
    ("Rating: 3", 3),  # holistic
    ("Rating: 4 at first sight, but Rating: 5 on reflection", 0),  # other; two ratings -> 0
    ("Mostly right.\nRating: \n5", 5),  # attribute; second pass, with the space
    ("rating: 0", 0),  # adversarial
    ("Rating: 6", 6),  # comparison
    ("Rating: 3", 3),  # counting
    ("Rating: 2", 2),  # relation
    ("Rating: 4", 4),  # environment
    ("Rating: 1", 1),  # holistic
    ("Rating: 6", 6),  # other
]


def test_score_and_hall_by_hand_with_an_offline_judge(bench, tmp_path):
    questions = mmhal.load_questions(bench)
    rows = [mmhal.answer_row(q, f"Assistant: my answer {q.id}") for q in questions]
    answers = tmp_path / "answers.json"
    mmhal.write_answers(rows, answers)
    requests_out, replies_in = tmp_path / "requests.jsonl", tmp_path / "replies.jsonl"
    replies_in.write_text(
        "".join(json.dumps({"id": i, "reply": r}) + "\n" for i, (r, _) in enumerate(REPLIES))
    )
    judge = Judge(model="gpt-4-1106-preview", requests_out=requests_out, replies_in=replies_in)
    got = mmhal.score(str(answers), bench, judge)

    # ratings 6 2 4 1 5 0 3 0 | 5 0 6 3 2 4 1 6 (the parser's readings above)
    assert [mmhal.parse_rating(r) for r, _ in REPLIES] == [s for _, s in REPLIES]
    # Score: (6+2+4+1+5+0+3+0) + (5+0+6+3+2+4+1+6) = 21 + 27 = 48; 48 / 16 = 3.0
    # Hall: ratings below 3 are 2, 1, 0, 0 | 0, 2, 1 -> 7 of 16 = 0.4375
    # Informativeness: s-3 for s >= 3: 3+1+2+0 | 2+3+0+1+3 = 15; s for s < 3: 2+1+0+0 | 0+2+1
    #   = 6; (15 + 6) / 16 = 1.3125; / 3 * 100 = 43.75
    # Per type, questions i and i+8: attribute (6+5)/2 = 5.5, adversarial (2+0)/2 = 1.0,
    #   comparison (4+6)/2 = 5.0, counting (1+3)/2 = 2.0, relation (5+2)/2 = 3.5,
    #   environment (0+4)/2 = 2.0, holistic (3+1)/2 = 2.0, other (0+6)/2 = 3.0
    assert got == {
        "mmhal_score": 3.0,
        "mmhal_hall": 0.4375,
        "mmhal_informativeness": 43.75,
        "mmhal_score_attribute": 5.5,
        "mmhal_score_adversarial": 1.0,
        "mmhal_score_comparison": 5.0,
        "mmhal_score_counting": 2.0,
        "mmhal_score_relation": 3.5,
        "mmhal_score_environment": 2.0,
        "mmhal_score_holistic": 2.0,
        "mmhal_score_other": 3.0,
    }

    # the requests file: one user message per answer, in template order
    sent = [json.loads(line) for line in requests_out.read_text().splitlines()]
    assert [s["id"] for s in sent] == list(range(16))
    assert sent[3]["model"] == "gpt-4-1106-preview"
    (message,) = sent[3]["messages"]
    assert message["role"] == "user"
    assert message["content"].startswith("Please act as an impartial and objective judge")
    # question 3's fields, and the model's answer with "Assistant:" removed, close the prompt
    assert message["content"].endswith(
        "### Image Contents\nObject3, Tree\n\n"
        "### Question\nQuestion 3 about the counting?\n\n"
        "### Standard Human-Generated Answer\nTruth 3.\n\n"
        "### LMM Response to Evaluate\nmy answer 3\n"
    )


def test_score_reads_the_released_generator_output_and_checks_the_pairing(bench, tmp_path):
    replies_in = tmp_path / "replies.jsonl"
    replies_in.write_text(
        "".join(json.dumps({"id": i, "reply": "Rating: 4"}) + "\n" for i in range(16))
    )
    judge = Judge(replies_in=replies_in)
    # muffin_vqa.py's JSONL ({"question_id", "text", ...}), filled into the template by position
    generated = tmp_path / "answers.jsonl"
    generated.write_text(
        "".join(
            json.dumps({"question_id": i, "text": f"Assistant: a{i}"}) + "\n" for i in range(16)
        )
    )
    rows = mmhal.read_answers(generated, bench)
    assert rows[7]["model_answer"] == "a7" and rows[7]["question_type"] == "other"
    got = mmhal.score(generated, bench, judge)
    # sixteen ratings of 4: Score 4.0, Hall 0 / 16 = 0.0, informativeness (4-3)/3*100 = 33.33...
    assert got["mmhal_score"] == 4.0 and got["mmhal_hall"] == 0.0
    assert got["mmhal_informativeness"] == pytest.approx(100 / 3)

    template_rows = [{**e, "model_answer": "x"} for e in template_entries()]
    with pytest.raises(ValueError, match="15 answers for the 16"):
        mmhal.score(template_rows[:15], bench, judge)
    swapped = [template_rows[1], template_rows[0], *template_rows[2:]]
    with pytest.raises(ValueError, match="keep the template's order"):
        mmhal.score(swapped, bench, judge)
    with pytest.raises(ValueError, match="LLM judge"):
        mmhal.score(template_rows, bench, None)
    # a missing reply is not scored as a 0: the judge names it
    replies_in.write_text(json.dumps({"id": 0, "reply": "Rating: 4"}) + "\n")
    with pytest.raises(JudgeError, match="first id 1"):
        mmhal.score(template_rows, bench, judge)
