"""python -m symmpo.evaluate generate: answers in the official files, batched generation equal to
one-at-a-time, text-only questions, resuming; score reads them back."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from symmpo.eval.cli import main as evaluate_main
from symmpo.eval.scorers import hallusion, mmstar


def png(colour, size=(40, 24)):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def mmstar_dir(tmp_path):
    folder = tmp_path / "mmstar"
    folder.mkdir()
    categories = [("coarse perception", "image emotion"), ("math", "geometry")]
    rows = [
        {
            "index": i,
            "question": f"Which colour is shown {i}?\nOptions: A: red, B: green, C: blue, D: grey",
            "image": {"bytes": png((40 * i, 200 - 30 * i, 90)), "path": None},
            "answer": "ABCD"[i % 4],
            "category": categories[i % 2][0],
            "l2_category": categories[i % 2][1],
            "meta_info": {"source": "s", "split": "val", "image_path": f"{i}.png"},
        }
        for i in range(5)
    ]
    pq.write_table(pa.Table.from_pylist(rows), folder / "mmstar.parquet")
    return folder


def generate(folder, answers, checkpoint, *extra):
    flags = ["generate", "--benchmark", folder.name, "--benchmark_dir", str(folder)]
    flags += ["--answers", str(answers), "--model_name_or_path", str(checkpoint)]
    flags += ["--max_new_tokens", "4", "--num_beams", "1", "--temperature", "0", *extra]
    return evaluate_main(flags)


def test_generated_answers_are_the_official_file_and_batching_changes_nothing(
    mmstar_dir, tiny_checkpoint, tmp_path, monkeypatch
):
    one = tmp_path / "one.json"
    batched = tmp_path / "batched.json"
    generate(mmstar_dir, one, tiny_checkpoint, "--batch_size", "1")
    generate(mmstar_dir, batched, tiny_checkpoint, "--batch_size", "3")
    rows = json.loads(one.read_text())
    assert rows == json.loads(batched.read_text())  # left padding changes no answer
    assert [r["index"] for r in rows] == list(range(5))
    assert set(rows[0]) == {"index", "question", "answer", "category", "l2_category", "bench"} | {
        "prediction"
    }
    assert all(isinstance(r["prediction"], str) for r in rows)
    assert not (tmp_path / "one.json.partial.jsonl").exists()
    monkeypatch.chdir(tmp_path)
    result = evaluate_main(
        [
            "score",
            "--benchmark",
            "mmstar",
            "--benchmark_dir",
            str(mmstar_dir),
            "--answers",
            str(one),
        ]
    )
    expected = sum(mmstar.is_correct(r) for r in mmstar.read_answers(one)) / 5
    assert result["mmstar_overall"] == pytest.approx(expected)
    logged = json.loads((tmp_path / "eval.jsonl").read_text().splitlines()[-1])
    assert logged["benchmark"] == "mmstar" and logged["mmstar_overall"] == result["mmstar_overall"]


def test_generation_resumes_from_its_partial_file(mmstar_dir, tiny_checkpoint, tmp_path):
    answers = tmp_path / "answers.json"
    partial = tmp_path / "answers.json.partial.jsonl"
    kept = [{"id": 0, "answer": "kept A"}, {"id": 3, "answer": "kept D"}]
    partial.write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"id": 4, "ans')  # torn
    generate(mmstar_dir, answers, tiny_checkpoint)
    rows = {r["index"]: r["prediction"] for r in json.loads(answers.read_text())}
    assert rows[0] == "kept A" and rows[3] == "kept D"
    fresh = tmp_path / "fresh.json"
    generate(mmstar_dir, fresh, tiny_checkpoint)
    fresh_rows = {r["index"]: r["prediction"] for r in json.loads(fresh.read_text())}
    generated = [i for i in fresh_rows if i not in (0, 3)]  # the torn line's 4 among them
    assert generated == [1, 2, 4] and all(rows[i] == fresh_rows[i] for i in generated)
    assert not partial.exists()


def test_text_only_questions_are_asked_without_an_image(tiny_checkpoint, tmp_path):
    folder = tmp_path / "hallusion"
    folder.mkdir()
    entries = [
        {
            "category": "VS",
            "subcategory": "chart",
            "visual_input": "0",
            "set_id": "0",
            "figure_id": "0",
            "question_id": str(q),
            "question": f"Is statement {q} true?",
            "gt_answer": "1",
            "gt_answer_details": "It is.",
            "filename": None,
        }
        for q in range(3)
    ]
    (folder / "HallusionBench.json").write_text(json.dumps(entries))
    questions = hallusion.load_questions(folder)
    assert all(q.image is None for q in questions)
    answers = tmp_path / "hallusion_answers.json"
    generate(folder, answers, tiny_checkpoint, "--batch_size", "2")
    rows = json.loads(answers.read_text())
    assert [r["question"] for r in rows] == [e["question"] for e in entries]
    assert all(isinstance(r["model_prediction"], str) for r in rows)


def test_score_with_an_offline_judge_uses_the_released_judge_settings(tmp_path, monkeypatch):
    from test_eval_score_mmhal import REPLIES, template_entries

    from symmpo.eval.scorers import mmhal

    folder = tmp_path / "mmhal"
    (folder / "images").mkdir(parents=True)
    entries = template_entries()
    (folder / "response_template.json").write_text(json.dumps(entries))
    for entry in entries:
        (folder / "images" / entry["image_src"].rsplit("/", 1)[1]).write_bytes(b"img")
    rows = [mmhal.answer_row(q, "an answer") for q in mmhal.load_questions(folder)]
    answers = tmp_path / "answers.json"
    mmhal.write_answers(rows, answers)
    requests, replies = tmp_path / "requests.jsonl", tmp_path / "replies.jsonl"
    flags = ["score", "--benchmark", "mmhal", "--benchmark_dir", str(folder)]
    flags += ["--answers", str(answers), "--judge_requests", str(requests)]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="mmhal: judge requests written to"):
        evaluate_main(flags)  # offline, no replies yet: the requests are out, nothing scored
    sent = [json.loads(line) for line in requests.read_text().splitlines()]
    assert len(sent) == 16 and sent[0]["model"] == "gpt-4-1106-preview"
    replies.write_text(
        "".join(json.dumps({"id": i, "reply": r}) + "\n" for i, (r, _) in enumerate(REPLIES))
    )
    result = evaluate_main([*flags, "--judge_replies", str(replies)])
    assert result["mmhal_score"] == 3.0 and result["mmhal_hall"] == 0.4375  # as the scorer's test
    assert (tmp_path / "eval.jsonl").read_text().count("\n") == 1  # the scored run only
