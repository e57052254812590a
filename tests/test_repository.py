"""The repository's own rules: nothing cites a file outside it, files stay small enough to read,
the README speaks of the product (no run numbers)."""

import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]


def project_files(*suffixes: str) -> list[pathlib.Path]:
    """The project's own files (git's list when it is a checkout; never .venv or build output)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        paths = [ROOT / p for p in listed]
    except (OSError, subprocess.CalledProcessError):
        skip = {".venv", ".git", "build", "dist"}
        paths = [p for p in ROOT.rglob("*") if not skip & set(p.relative_to(ROOT).parts)]
    return sorted(p for p in paths if p.suffix in suffixes and p.is_file())


def test_nothing_cites_a_file_outside_the_repository():
    outside = re.compile(r"SPEC\.md|shared/")
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in project_files(".py", ".md")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if outside.search(line) and path.name != "test_repository.py"
    ]
    assert not hits, hits


def test_files_stay_small_enough_to_read():
    assert len((ROOT / "train.py").read_text().splitlines()) <= 250
    too_long = {
        str(path.relative_to(ROOT)): n
        for path in project_files(".py")
        if path.relative_to(ROOT).parts[0] in ("symmpo", "kernels")
        and (n := len(path.read_text(encoding="utf-8").splitlines())) > 400
    }
    assert not too_long, too_long


def test_readme_is_about_the_product():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    history = re.compile(r"\brun \d+\b|\bruns \d|\bsession\b|\blent\b", re.IGNORECASE)
    assert not history.findall(text)
