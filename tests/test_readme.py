"""The README's API example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs():
    text = README.read_text(encoding="utf-8")
    code = re.search(r"## The API\n\n```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["out"].loss.requires_grad


def test_own_loop_example_trains(tmp_path, monkeypatch):
    """The trainer pieces example of docs/training.md: a run driven from Python without
    train.py."""
    guide = README.parent / "docs" / "training.md"
    code = re.search(r"## Your own loop\n\n```python\n(.*?)```", guide.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(guide), "exec"), namespace)
    out = namespace["out"]
    assert out.loss.requires_grad and set(out.metrics()) >= {"loss", "accuracy_dpo"}
    assert list((tmp_path / "out" / "my-run" / "ref_cache").glob("ref_logps-*.jsonl"))
