"""A deterministic synthetic hallucination data set: coloured shapes drawn with PIL.

Every record follows the released SymMPO layout (``idx, question, resp_1_w, resp_1_l, resp_2_w,
resp_2_l, image_1, image_2, image_path_1, image_path_2, origin_dataset, origin_split``) plus
``scene_1`` and ``scene_2``: the drawn scenes as JSON-serialisable lists of object groups,
``{"shape", "colour", "count", "position"}``, for the hallucination metrics.

The scenes follow a language prior that some images contradict (``symmpo.train.synthetic_world``:
paired objects usually come together). Image m draws scene 1, the contrastive image m' scene 2;
one of them breaks the prior where the record's kind says so. ``resp_*_w`` describe their scene
correctly; ``resp_*_l`` are the prior-driven hallucination on it: the scene plus an object it
lacks, the missing partner when it has one. Records are drawn from a ``random.Random`` keyed on
(seed, split, idx), so a record depends on nothing else and the output is byte-identical for
equal arguments. ``hallucination_rate`` and ``exact_rate`` score answers against scenes.
"""

from __future__ import annotations

import io
import random
import re
from collections.abc import Iterable

from PIL import Image, ImageDraw

from .synthetic_world import (
    COLOUR_NAMES,
    COLOURS,
    COUNT_WORDS,
    KIND_WEIGHTS,
    MAX_COUNT,
    MAX_GROUPS,
    PARTNERS,
    POSITIONS,
    RECORD_KINDS,
    SHAPE_PLURALS,
    SHAPES,
    canonical_scene,
    conforms,
    make_group,
    missing_partners,
    prior_hallucination,
    sample_kind,
    sample_scene,
    scene_key,
    scene_objects,
    scenes_of_kind,
)

__all__ = [
    "COLOUR_NAMES",
    "COLOURS",
    "COUNT_WORDS",
    "KIND_WEIGHTS",
    "MAX_COUNT",
    "MAX_GROUPS",
    "PARTNERS",
    "POSITIONS",
    "QUESTIONS",
    "RECORD_KINDS",
    "SHAPE_PLURALS",
    "SHAPES",
    "canonical_scene",
    "conforms",
    "describe_scene",
    "exact_rate",
    "hallucinated_scene",
    "prior_hallucination_rate",
    "hallucination_rate",
    "make_group",
    "make_record",
    "make_synthetic_records",
    "missing_partners",
    "parse_description",
    "sample_scene",
    "scene_key",
    "synthetic_splits",
]

BACKGROUND_RGB = (240, 240, 235)

#: How a description names each region.
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}

#: Region boxes as fractions of the image (x0, y0, x1, y1): two side columns spanning the full
#: height (groups stacked vertically) and a middle column cut into three rows (groups side by
#: side). The empty strips between the columns keep neighbouring groups visibly apart.
REGION_BOXES = {
    "left": (0.0, 0.0, 0.18, 1.0),
    "right": (0.82, 0.0, 1.0, 1.0),
    "top": (0.22, 0.0, 0.78, 1 / 3),
    "center": (0.22, 1 / 3, 0.78, 2 / 3),
    "bottom": (0.22, 2 / 3, 0.78, 1.0),
}
#: Side of one drawn shape as a fraction of the image side (9 px at 64 x 64).
SHAPE_SIZE_FRACTION = 0.14
MIN_IMAGE_SIZE = 16

#: The fixed question phrasings.
QUESTIONS = (
    "What is in the image?",
    "Describe the image.",
    "What objects do you see?",
    "What do you see in this picture?",
    "Describe the objects in the image.",
)

ORIGIN_DATASET = "symmpo-synthetic"


def hallucinated_scene(
    scene: list[dict], rng: random.Random, forbidden_descriptions: Iterable[str] = ()
) -> list[dict]:
    """The scene a prior-driven hallucination describes (``prior_hallucination``): ``scene``
    plus an absent object, its missing partner when it has one; never a scene whose description
    is in ``forbidden_descriptions``."""
    forbidden = {scene_key(parse_description(text)) for text in forbidden_descriptions}
    return prior_hallucination(scene, rng, forbidden)


# -- text ---------------------------------------------------------------------------------------


def group_phrase(group: dict) -> str:
    """E.g. ``"two red circles on the left"``, with the plural only for counts above one."""
    shape = group["shape"] if group["count"] == 1 else SHAPE_PLURALS[group["shape"]]
    count = COUNT_WORDS[group["count"]]
    return f"{count} {group['colour']} {shape} {POSITION_PHRASES[group['position']]}"


def describe_scene(scene: Iterable[dict]) -> str:
    """E.g. ``"There are two red circles on the left and one blue square on the right."``"""
    groups = canonical_scene(scene)
    if not groups:
        raise ValueError("a scene needs at least one group")
    phrases = [group_phrase(group) for group in groups]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    verb = "is" if groups[0]["count"] == 1 else "are"
    return f"There {verb} {listed}."


_COUNT_ALTERNATIVES = "|".join(COUNT_WORDS.values())
_COLOUR_ALTERNATIVES = "|".join(COLOUR_NAMES)
_SHAPE_ALTERNATIVES = "|".join(sorted([*SHAPE_PLURALS.values(), *SHAPES], key=len, reverse=True))
_POSITION_ALTERNATIVES = "|".join(POSITION_PHRASES.values())
_GROUP_PATTERN = re.compile(
    rf"\b(?P<count>{_COUNT_ALTERNATIVES}) (?P<colour>{_COLOUR_ALTERNATIVES}) "
    rf"(?P<shape>{_SHAPE_ALTERNATIVES}) (?P<position>{_POSITION_ALTERNATIVES})\b"
)
_COUNT_OF_WORD = {word: count for count, word in COUNT_WORDS.items()}
_SHAPE_OF_WORD = {**{s: s for s in SHAPES}, **{p: s for s, p in SHAPE_PLURALS.items()}}
_POSITION_OF_PHRASE = {phrase: position for position, phrase in POSITION_PHRASES.items()}


def parse_description(text: str) -> list[dict]:
    """The groups a description mentions, in the order it mentions them (inverse of
    ``describe_scene`` up to group order; phrases it cannot read are skipped)."""
    return [
        make_group(
            _SHAPE_OF_WORD[match["shape"]],
            match["colour"],
            _COUNT_OF_WORD[match["count"]],
            _POSITION_OF_PHRASE[match["position"]],
        )
        for match in _GROUP_PATTERN.finditer(text)
    ]


def names_absent_object(answer: str, scene: Iterable[dict]) -> bool:
    """Whether the answer names a (colour, shape) object the scene does not hold."""
    present = scene_objects(scene)
    return any((g["colour"], g["shape"]) not in present for g in parse_description(answer))


def hallucination_rate(answers: Iterable[str], scenes: Iterable[Iterable[dict]]) -> float:
    """The fraction of answers naming an object (colour, shape) absent from their scene."""
    flags = [names_absent_object(a, s) for a, s in zip(answers, scenes, strict=True)]
    return sum(flags) / max(len(flags), 1)


def names_missing_partner(answer: str, scene: Iterable[dict]) -> bool:
    """Whether the answer names the absent partner of an object the scene holds: the language
    prior's hallucination, the one the synthetic set's rejected answers make."""
    present = scene_objects(scene)
    partners = {PARTNERS[o] for o in present if o in PARTNERS} - present
    return any((g["colour"], g["shape"]) in partners for g in parse_description(answer))


def prior_hallucination_rate(answers: Iterable[str], scenes: Iterable[Iterable[dict]]) -> float:
    """The fraction of answers naming a missing partner (``names_missing_partner``); the rest
    of ``hallucination_rate`` is misperception (a wrong colour or shape)."""
    flags = [names_missing_partner(a, s) for a, s in zip(answers, scenes, strict=True)]
    return sum(flags) / max(len(flags), 1)


def exact_rate(answers: Iterable[str], scenes: Iterable[Iterable[dict]]) -> float:
    """The fraction of answers equal to their scene's correct description."""
    flags = [a.strip() == describe_scene(s) for a, s in zip(answers, scenes, strict=True)]
    return sum(flags) / max(len(flags), 1)


# -- images -------------------------------------------------------------------------------------


def shape_size(image_size: int) -> int:
    """Side in pixels of one drawn shape."""
    return max(3, round(image_size * SHAPE_SIZE_FRACTION))


def object_centres(position: str, count: int, image_size: int) -> list[tuple[float, float]]:
    """Centres of ``count`` shapes spread evenly along the long side of the region's box."""
    x0, y0, x1, y1 = (fraction * image_size for fraction in REGION_BOXES[position])
    vertical = (y1 - y0) > (x1 - x0)
    centres = []
    for i in range(count):
        along = (i + 0.5) / count
        if vertical:
            centres.append(((x0 + x1) / 2, y0 + along * (y1 - y0)))
        else:
            centres.append((x0 + along * (x1 - x0), (y0 + y1) / 2))
    return centres


def draw_scene(scene: Iterable[dict], image_size: int = 64) -> Image.Image:
    """The scene as an RGB image: each group's shapes, filled, on a plain light background."""
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    image = Image.new("RGB", (image_size, image_size), BACKGROUND_RGB)
    draw = ImageDraw.Draw(image)
    size = shape_size(image_size)
    for group in canonical_scene(scene):
        fill = COLOURS[group["colour"]]
        for cx, cy in object_centres(group["position"], group["count"], image_size):
            left, top = round(cx - size / 2), round(cy - size / 2)
            right, bottom = left + size - 1, top + size - 1  # PIL boxes include both ends
            if group["shape"] == "circle":
                draw.ellipse((left, top, right, bottom), fill=fill)
            elif group["shape"] == "square":
                draw.rectangle((left, top, right, bottom), fill=fill)
            elif group["shape"] == "triangle":
                apex = ((left + right) / 2, top)
                draw.polygon([apex, (left, bottom), (right, bottom)], fill=fill)
            else:
                raise ValueError(f"unknown shape {group['shape']!r}")
    return image


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of the image (PIL's PNG writer is deterministic: no timestamps)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# -- records ------------------------------------------------------------------------------------


def _record_rng(seed: int, split: str, idx: int) -> random.Random:
    # A str seed goes through SHA-512, so this is stable across processes and PYTHONHASHSEED.
    return random.Random(f"{ORIGIN_DATASET}/{seed}/{split}/{idx}")


def _scenes_for(
    rng: random.Random, split: str, avoid_scenes: set[str]
) -> tuple[str, list[dict], list[dict]]:
    """(kind, scene 1, scene 2) of a record of ``split``; scene 1 is never in ``avoid_scenes``."""
    kind = sample_kind(rng, split)
    scene_1, scene_2 = scenes_of_kind(kind, rng)
    while scene_key(scene_1) in avoid_scenes:
        scene_1, scene_2 = scenes_of_kind(kind, rng)
    return kind, scene_1, scene_2


def make_record(
    idx: int,
    seed: int = 0,
    image_size: int = 64,
    split: str = "train",
    avoid_scenes: Iterable[str] = (),
) -> dict:
    """One record, drawn from a generator keyed on (seed, split, idx) only.

    ``avoid_scenes`` holds ``scene_key`` values that scene 1 must not equal (used to keep held-out
    images out of the training set).
    """
    rng = _record_rng(seed, split, idx)
    _, scene_1, scene_2 = _scenes_for(rng, split, set(avoid_scenes))
    question = rng.choice(QUESTIONS)
    resp_1_w, resp_2_w = describe_scene(scene_1), describe_scene(scene_2)
    resp_1_l = describe_scene(prior_hallucination(scene_1, rng, [scene_key(scene_2)]))
    resp_2_l = describe_scene(prior_hallucination(scene_2, rng, [scene_key(scene_1)]))
    return {
        "idx": idx,
        "question": question,
        "resp_1_w": resp_1_w,
        "resp_1_l": resp_1_l,
        "resp_2_w": resp_2_w,
        "resp_2_l": resp_2_l,
        "image_1": {"bytes": encode_png(draw_scene(scene_1, image_size)), "path": None},
        "image_2": {"bytes": encode_png(draw_scene(scene_2, image_size)), "path": None},
        "image_path_1": None,
        "image_path_2": None,
        "origin_dataset": ORIGIN_DATASET,
        "origin_split": split,
        "scene_1": scene_1,
        "scene_2": scene_2,
    }


def make_synthetic_records(
    n: int,
    seed: int = 0,
    image_size: int = 64,
    split: str = "train",
    start_idx: int = 0,
    avoid_scenes: Iterable[str] = (),
) -> list[dict]:
    """``n`` records with idx ``start_idx .. start_idx + n - 1``; equal arguments give
    byte-identical records, and record ``idx`` does not depend on ``n``."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    avoid = set(avoid_scenes)
    return [
        make_record(start_idx + i, seed, image_size, split, avoid_scenes=avoid) for i in range(n)
    ]


def synthetic_splits(
    n_train: int = 256, n_heldout: int = 64, seed: int = 0, image_size: int = 64
) -> tuple[list[dict], list[dict]]:
    """(train, heldout): heldout idx continue after train's (``start_idx=n_train``), come from
    the "heldout" generator stream, and no heldout image m repeats a training image m."""
    train = make_synthetic_records(n_train, seed, image_size, split="train")
    seen = {scene_key(record["scene_1"]) for record in train}
    heldout = make_synthetic_records(
        n_heldout, seed, image_size, split="heldout", start_idx=n_train, avoid_scenes=seen
    )
    return train, heldout
