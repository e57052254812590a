"""HallusionBench scorer: the released question reading, answers file, judge requests, reply
parsing and grouping, on a constructed question file with hand-computed expectations."""

import json

import pytest

from symmpo.eval.judge import Judge
from symmpo.eval.scorers import hallusion


def entry(category, subcategory, visual_input, set_id, figure_id, question_id, **extra):
    """One question file entry, ids stored as strings as in the official file."""
    filename = None
    if visual_input != "0":
        filename = f"./{category}/{subcategory}/{set_id}_{figure_id}.png"
    row = {
        "category": category,
        "subcategory": subcategory,
        "visual_input": visual_input,
        "set_id": str(set_id),
        "figure_id": str(figure_id),
        "sample_note": "note",
        "question_id": str(question_id),
        "question": f"Is {category} {set_id} {figure_id} {question_id} true?",
        "gt_answer_details": f"Detail {category}{set_id}{figure_id}{question_id}.",
        "gt_answer": "1",
        "filename": filename,
    }
    row.update(extra)
    return row


# Two sets, each two questions over two figures:
# VD/illusion set 0: figure 0 (original) and figure 1 (edited), questions 0 and 1;
# VS/chart set 0: figure 0 asked with no figure (visual_input "0"), figure 1 with the chart.
ENTRIES = [
    entry("VD", "illusion", "1", 0, 0, 0),
    entry("VD", "illusion", "1", 0, 0, 1),
    entry("VD", "illusion", "2", 0, 1, 0),
    entry("VD", "illusion", "2", 0, 1, 1),
    entry("VS", "chart", "0", 0, 0, 0),
    entry("VS", "chart", "0", 0, 0, 1),
    entry("VS", "chart", "1", 0, 1, 0),
    entry("VS", "chart", "1", 0, 1, 1),
]

# Judge replies per question name (category_subcategory_set_figure_question).
REPLIES = {
    "VD_illusion_0_0_0": "Correct",  # -> "1"
    "VD_illusion_0_0_1": "correct.",  # -> "1"
    "VD_illusion_0_1_0": "Incorrect",  # -> "0": one wrong answer in figure 1 and question 0
    "VD_illusion_0_1_1": "The prediction is correct.",  # -> "1"
    "VS_chart_0_0_0": "unclear",  # -> "2": VS without a figure, counts as correct
    "VS_chart_0_0_1": "This is incorrect, not correct",  # "incorrect" wins -> "0"
    "VS_chart_0_1_0": "CORRECT",  # -> "1"
    "VS_chart_0_1_1": "I cannot tell",  # -> "2": with a figure, counts as wrong
}


@pytest.fixture
def bench(tmp_path):
    folder = tmp_path / "hallusion"
    folder.mkdir()
    (folder / "HallusionBench.json").write_text(json.dumps(ENTRIES), encoding="utf-8")
    for row in ENTRIES:
        if row["filename"]:
            image = folder / row["filename"][2:]
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(b"png")
    return folder


def answers_file(bench, tmp_path):
    questions = hallusion.load_questions(bench)
    rows = [hallusion.answer_row(q, f"Yes, answer to {q.id}.") for q in questions]
    path = tmp_path / "answers.json"
    hallusion.write_answers(rows, path)
    return path


def offline_judge(tmp_path, replies=REPLIES):
    replies_in = tmp_path / "replies.jsonl"
    replies_in.write_text(
        "".join(json.dumps({"id": k, "reply": v}) + "\n" for k, v in replies.items()),
        encoding="utf-8",
    )
    return Judge(requests_out=str(tmp_path / "requests.jsonl"), replies_in=str(replies_in))


def test_released_reading_asks_every_official_question_without_figure(bench):
    # The released inference attaches a figure only where visual_input == 1 (an int); the
    # official file stores "1", so no question gets one.
    questions = hallusion.load_questions(bench)
    assert [q.id for q in questions] == list(REPLIES)
    assert all(q.image is None for q in questions)
    assert questions[0].prompt == ENTRIES[0]["question"]  # the question alone
    assert questions[0].fields == ENTRIES[0]


def test_benchmark_reading_attaches_figures_except_no_visual_questions(bench):
    questions = hallusion.load_questions(bench, images="benchmark")
    images = {q.id: q.image for q in questions}
    assert images["VD_illusion_0_1_0"] == "VD/illusion/0_1.png"  # "./" stripped, relative
    assert images["VS_chart_0_1_1"] == "VS/chart/0_1.png"
    assert images["VS_chart_0_0_0"] is None and images["VS_chart_0_0_1"] is None
    assert sum(image is not None for image in images.values()) == 6


def test_released_reading_with_integer_visual_input(tmp_path):
    # Were visual_input stored as numbers, the released test would hold for 1 only: edited
    # figures (2) and no-figure questions (0) would go without.
    folder = tmp_path / "ints"
    folder.mkdir()
    rows = [
        entry("VD", "math", 1, 0, 0, 0),
        entry("VD", "math", 2, 0, 1, 0),
        entry("VS", "map", 0, 0, 0, 0),
    ]
    rows[0]["filename"] = "./hallusion_bench/VD/math/0_0.png"
    (folder / "HallusionBench.json").write_text(json.dumps(rows))
    (folder / "hallusion_bench/VD/math").mkdir(parents=True)
    (folder / "hallusion_bench/VD/math/0_0.png").write_bytes(b"png")
    images = [q.image for q in hallusion.load_questions(folder)]
    assert images == ["hallusion_bench/VD/math/0_0.png", None, None]


def test_figure_found_under_the_archive_folder(tmp_path):
    folder = tmp_path / "nested"
    (folder / "hallusion_bench/VS/chart").mkdir(parents=True)
    (folder / "hallusion_bench/VS/chart/0_1.png").write_bytes(b"png")
    (folder / "HallusionBench.json").write_text(json.dumps([entry("VS", "chart", "1", 0, 1, 0)]))
    [question] = hallusion.load_questions(folder, images="benchmark")
    assert question.image == "hallusion_bench/VS/chart/0_1.png"


def test_answers_file_is_the_entries_with_model_prediction(bench, tmp_path):
    path = answers_file(bench, tmp_path)
    rows = json.loads(path.read_text())
    assert isinstance(rows, list) and len(rows) == 8
    assert rows[2] == {**ENTRIES[2], "model_prediction": "Yes, answer to VD_illusion_0_1_0."}


def test_reply_parsing_as_released():
    assert hallusion.parse_verdict("Correct") == "1"
    assert hallusion.parse_verdict("incorrect") == "0"
    assert hallusion.parse_verdict("Not correct") == "1"  # only the word "incorrect" is "0"
    assert hallusion.parse_verdict("INCORRECT, though partly correct") == "0"
    assert hallusion.parse_verdict("unclear") == "2"
    assert hallusion.parse_verdict("") == "2"


def test_scores_with_offline_judge(bench, tmp_path):
    judge = offline_judge(tmp_path)
    result = hallusion.score(answers_file(bench, tmp_path), bench, judge)

    # Correct flags (verdict "1"; VS figure 0 also "2"):
    #   VD_illusion_0_0_0 1, VD_illusion_0_0_1 1, VD_illusion_0_1_0 0, VD_illusion_0_1_1 1,
    #   VS_chart_0_0_0 1 (unclear, no figure), VS_chart_0_0_1 0, VS_chart_0_1_0 1,
    #   VS_chart_0_1_1 0 (unclear, with figure).
    # aAcc: 5 correct of 8 -> 62.5
    # qAcc groups (category_subcategory_set_question):
    #   VD_illusion_0_0: figures 0,1 -> 1,0 wrong; VD_illusion_0_1: 1,1 right;
    #   VS_chart_0_0: 1,1 right; VS_chart_0_1: 0,0 wrong -> 2 of 4 -> 50.0
    # fAcc groups (category_subcategory_set_figure, VS figure 0 left out):
    #   VD_illusion_0_0: 1,1 right; VD_illusion_0_1: 0,1 wrong; VS_chart_0_1: 1,0 wrong
    #   -> 1 of 3 -> round(33.333..., 4) = 33.3333
    assert result == {"hallusion_qacc": 50.0, "hallusion_facc": 33.3333, "hallusion_aacc": 62.5}

    requests = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert [r["id"] for r in requests] == list(REPLIES)
    [message] = requests[2]["messages"]
    assert message["role"] == "user"
    text = message["content"]
    assert text.startswith("Imagine you are an intelligent teacher. Thoroughly read the question")
    assert "please generate \u201ccorrect\u201d." in text
    assert 'please generate "unclear". \n\n Question:' in text
    assert text.endswith(
        "Question:Is VD 0 1 0 true?\nReference answer: Detail VD010.\n"
        "Prediction answer:Yes, answer to VD_illusion_0_1_0.\nOutput:"
    )


def test_all_correct_and_other_categories_dropped(bench, tmp_path):
    rows = json.loads(answers_file(bench, tmp_path).read_text())
    rows.append({**entry("XX", "other", "1", 0, 0, 0), "model_prediction": "no"})
    judge = offline_judge(tmp_path, {name: "correct" for name in REPLIES})
    result = hallusion.score(rows, bench, judge)
    # Every VD/VS answer correct: 8/8, 4/4 question groups, 3/3 figure groups; the XX entry is
    # neither asked nor counted (the released script keeps VD and VS only).
    assert result == {"hallusion_qacc": 100.0, "hallusion_facc": 100.0, "hallusion_aacc": 100.0}


def test_vs_without_figure_wrong_answer_breaks_only_its_question_group(bench, tmp_path):
    replies = {name: "correct" for name in REPLIES} | {"VS_chart_0_0_1": "incorrect"}
    result = hallusion.score(answers_file(bench, tmp_path), bench, offline_judge(tmp_path, replies))
    # aAcc 7/8 = 87.5; qAcc: VS_chart_0_1 wrong -> 3/4 = 75.0; fAcc: VS figure 0 is not a
    # figure group, so 3/3 = 100.0
    assert result == {"hallusion_qacc": 75.0, "hallusion_facc": 100.0, "hallusion_aacc": 87.5}


def test_judge_required(bench, tmp_path):
    with pytest.raises(ValueError, match="LLM judge"):
        hallusion.score(answers_file(bench, tmp_path), bench)


def test_missing_reply_is_an_error(bench, tmp_path):
    replies = dict(REPLIES)
    del replies["VS_chart_0_1_1"]
    from symmpo.eval.judge import JudgeError

    with pytest.raises(JudgeError, match="VS_chart_0_1_1"):
        hallusion.score(answers_file(bench, tmp_path), bench, offline_judge(tmp_path, replies))
