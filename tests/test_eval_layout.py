"""symmpo.eval's place: above symmpo.train, never imported by the loss API; symmpo.evaluate is
its entry point and keeps the names it used to define; AMBER folders may be relative."""

import json
import pathlib
import re
import subprocess
import sys

import symmpo.evaluate
from symmpo.eval import checkpoint, cli, generation, hallucination, plots, preference, readers

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_loss_api_does_not_import_the_evaluation():
    code = (
        "import sys, symmpo, symmpo.loss, symmpo.fused_linear, symmpo.config\n"
        "print([m for m in sys.modules if m.startswith(('symmpo.eval', 'symmpo.train'))])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    for path in (ROOT / "symmpo").glob("*.py"):
        if path.name != "evaluate.py":
            imports = re.search(r"\bsymmpo\.eval\b|from \.eval\b|import eval\b", path.read_text())
            assert imports is None, path.name


def test_evaluate_reexports_the_package_names():
    modules = (checkpoint, cli, generation, hallucination, plots, preference, readers)
    for name in symmpo.evaluate.__all__:
        owner = next(m for m in modules if hasattr(m, name))
        assert getattr(symmpo.evaluate, name) is getattr(owner, name), name


def test_modules_stay_under_400_lines():
    for path in (ROOT / "symmpo" / "eval").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path.name


def test_python_dash_m_symmpo_evaluate_runs_the_cli(tmp_path):
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"image_id": 1, "answer": "a dog and two cats"}\n')
    objects = tmp_path / "objects.jsonl"
    objects.write_text('{"image_id": 1, "objects": ["dog"]}\n')
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "symmpo.evaluate",
            "--chair_responses",
            str(answers),
            "--chair_annotations",
            str(objects),
            "--output_dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert "--chair_synonyms" in out.stderr  # the missing-synonyms warning
    row = json.loads((tmp_path / "eval.jsonl").read_text())
    assert row["chair_CHAIRs"] == 0.0 and row["chair_mentions"] == 1  # cat is not in the vocabulary
    assert json.loads(out.stdout) == row


def test_read_amber_relative_folder(tmp_path, monkeypatch):
    """Item images resolve from a relative --amber_dir (they used to be joined to it twice)."""
    folder = tmp_path / "amber"
    (folder / "images").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (4, 4), "red").save(folder / "images" / "a.png")
    (folder / "query_generative.json").write_text(
        json.dumps(
            [
                {"id": 1, "image": "a.png", "query": "Describe."},
                {"id": 2, "image": "b.png", "query": "Describe."},
            ]
        )
    )
    (folder / "annotations.json").write_text(
        json.dumps(
            [
                {"id": 1, "type": "generative", "truth": ["box"], "hallu": []},
                {"id": 2, "type": "discriminative", "truth": [], "hallu": []},
            ]
        )
    )
    monkeypatch.chdir(tmp_path)
    items, notes = readers.read_amber("amber")
    assert [i["id"] for i in items] == [1] and list(notes) == [1]
    (image,) = readers.load_item_images(items, "amber")
    assert image.size == (4, 4) and image.mode == "RGB"
