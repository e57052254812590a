"""The evaluation's inputs: JSONL files (CHAIR's questions, answers and annotations, a run's
``metrics.jsonl`` / ``eval.jsonl``), AMBER's generative-task folder and the images they name."""

from __future__ import annotations

import json
import pathlib


def read_jsonl(path) -> list[dict]:
    """One dict per non-blank line of a UTF-8 JSONL file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_amber(folder) -> tuple[list[dict], dict]:
    """AMBER's generative task: query_generative.json ({id, image, query}, images under
    image/ or images/) and annotations.json ({id, type, truth, hallu, ...}).

    Returns the items {id, image (absolute path), question} that have a generative annotation,
    and those annotations by id."""
    folder = pathlib.Path(folder).resolve()
    queries = json.loads((folder / "query_generative.json").read_text())
    notes = {
        a["id"]: a
        for a in json.loads((folder / "annotations.json").read_text())
        if a.get("type", "generative") == "generative"
    }
    image_dir = next((folder / d for d in ("image", "images") if (folder / d).is_dir()), folder)
    items = [
        {"id": q["id"], "image": image_dir / q["image"], "question": q["query"]}
        for q in queries
        if q["id"] in notes
    ]
    return items, notes


def load_item_images(items, base) -> list:
    """The RGB PIL image of each item's ``image``: an absolute path as is, a relative one under
    ``base`` (or under its folder when ``base`` is a file, such as a questions JSONL)."""
    from PIL import Image

    base = pathlib.Path(base)
    base = base.parent if base.is_file() else base
    paths = [pathlib.Path(item["image"]) for item in items]
    return [Image.open(p if p.is_absolute() else base / p).convert("RGB") for p in paths]
