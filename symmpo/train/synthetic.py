"""A deterministic synthetic hallucination data set: coloured shapes drawn with PIL.

Every record follows the released SymMPO layout (``idx, question, resp_1_w, resp_1_l, resp_2_w,
resp_2_l, image_1, image_2, image_path_1, image_path_2, origin_dataset, origin_split``) plus
``scene_1`` and ``scene_2``: the drawn scenes as JSON-serialisable lists of object groups,
``{"shape", "colour", "count", "position"}``, for a hallucination metric.

A scene holds 1 to 3 groups on a plain light background; a group is ``count`` (1 to 3) equal
shapes of one colour in one region of the image, and no two groups share a (colour, shape) pair
or a region. Image m draws scene 1; the contrastive image m' draws scene 2, the same scene with
exactly one attribute (colour, shape or count) of one group changed. ``resp_*_w`` describe their
scene correctly; ``resp_*_l`` hallucinate on it: one attribute of one group changed to something
absent from the scene, or an extra, absent group. Records are drawn from a ``random.Random``
keyed on (seed, split, idx), so a record depends on nothing else and the output is byte-identical
for equal arguments.
"""

from __future__ import annotations

import io
import json
import random
import re
from collections.abc import Iterable

from PIL import Image, ImageDraw

#: Shape names, and their plural forms for counts above one.
SHAPES = ("circle", "square", "triangle")
SHAPE_PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}

#: Colour names and the RGB value each is drawn with: far apart in RGB and from the background.
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 195, 0),
    "purple": (140, 40, 180),
}
COLOUR_NAMES = tuple(COLOURS)
BACKGROUND_RGB = (240, 240, 235)

#: Counts a group may have, spelled out.
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
MAX_COUNT = max(COUNT_WORDS)
MAX_GROUPS = 3

#: Regions of the image, in the order a description lists them, and how a description names them.
POSITIONS = ("left", "right", "top", "bottom", "center")
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

#: Ways a rejected response departs from its scene (an attribute change or an extra group).
HALLUCINATION_KINDS = ("colour", "shape", "count", "extra_group")
#: Ways the contrastive scene departs from scene 1.
CONTRAST_ATTRIBUTES = ("colour", "shape", "count")

ORIGIN_DATASET = "symmpo-synthetic"
_HALLUCINATION_ATTEMPTS = 8


# -- scenes -------------------------------------------------------------------------------------


def make_group(shape: str, colour: str, count: int, position: str) -> dict:
    """One object group, in the key order scenes are stored with."""
    return {"shape": shape, "colour": colour, "count": count, "position": position}


def canonical_scene(scene: Iterable[dict]) -> list[dict]:
    """Copies of the groups, ordered by region as descriptions list them."""
    groups = [make_group(g["shape"], g["colour"], g["count"], g["position"]) for g in scene]
    return sorted(groups, key=lambda group: POSITIONS.index(group["position"]))


def scene_key(scene: Iterable[dict]) -> str:
    """A string that identifies a scene regardless of group order (for comparisons and sets)."""
    return json.dumps(canonical_scene(scene), sort_keys=True)


def _pairs(scene: Iterable[dict]) -> set[tuple[str, str]]:
    return {(group["colour"], group["shape"]) for group in scene}


def sample_scene(rng: random.Random) -> list[dict]:
    """1 to 3 groups in distinct regions with distinct (colour, shape) pairs, counts 1 to 3."""
    n_groups = rng.randint(1, MAX_GROUPS)
    positions = rng.sample(POSITIONS, n_groups)
    pairs = rng.sample([(c, s) for c in COLOUR_NAMES for s in SHAPES], n_groups)
    groups = [
        make_group(shape, colour, rng.randint(1, MAX_COUNT), position)
        for (colour, shape), position in zip(pairs, positions, strict=True)
    ]
    return canonical_scene(groups)


def _attribute_options(scene: list[dict], index: int, attribute: str) -> list:
    """Values that ``attribute`` of group ``index`` may change to, keeping pairs distinct."""
    group = scene[index]
    taken = _pairs(g for i, g in enumerate(scene) if i != index)
    colour, shape = group["colour"], group["shape"]
    if attribute == "colour":
        return [c for c in COLOUR_NAMES if c != colour and (c, shape) not in taken]
    if attribute == "shape":
        return [s for s in SHAPES if s != shape and (colour, s) not in taken]
    if attribute == "count":
        return [k for k in COUNT_WORDS if k != group["count"]]
    raise ValueError(f"unknown attribute {attribute!r}")


def _with_attribute(scene: list[dict], index: int, attribute: str, value) -> list[dict]:
    changed = [dict(group) for group in scene]
    changed[index][attribute] = value
    return canonical_scene(changed)


def contrast_scene(scene: list[dict], rng: random.Random) -> list[dict]:
    """The scene with exactly one attribute (colour, shape or count) of one group changed."""
    index = rng.randrange(len(scene))
    attributes = list(CONTRAST_ATTRIBUTES)
    rng.shuffle(attributes)
    for attribute in attributes:  # count always has options, so this always returns
        options = _attribute_options(scene, index, attribute)
        if options:
            return _with_attribute(scene, index, attribute, rng.choice(options))
    raise AssertionError("unreachable: a count can always change")


def _hallucinate_once(scene: list[dict], kind: str, rng: random.Random) -> list[dict] | None:
    """The scene a hallucinated response describes, or None if ``kind`` cannot apply here."""
    present_colours = {group["colour"] for group in scene}
    present_pairs = _pairs(scene)
    if kind == "extra_group":
        free_positions = [p for p in POSITIONS if p not in {g["position"] for g in scene}]
        absent_pairs = [(c, s) for c in COLOUR_NAMES for s in SHAPES if (c, s) not in present_pairs]
        colour, shape = rng.choice(absent_pairs)
        extra = make_group(shape, colour, rng.randint(1, MAX_COUNT), rng.choice(free_positions))
        return canonical_scene([*scene, extra])
    index = rng.randrange(len(scene))
    group = scene[index]
    if kind == "colour":  # a colour that appears nowhere in the scene
        options = [c for c in COLOUR_NAMES if c not in present_colours]
    elif kind == "shape":  # a (colour, shape) object that is absent from the scene
        options = [s for s in SHAPES if (group["colour"], s) not in present_pairs]
    elif kind == "count":  # the group's object, but in a number the image does not show
        options = [k for k in COUNT_WORDS if k != group["count"]]
    else:
        raise ValueError(f"unknown hallucination kind {kind!r}")
    if not options:
        return None
    return _with_attribute(scene, index, kind, rng.choice(options))


def hallucinated_scene(
    scene: list[dict], rng: random.Random, forbidden_descriptions: Iterable[str] = ()
) -> list[dict]:
    """A scene that differs from ``scene`` by one absent attribute value or one absent group.

    ``forbidden_descriptions`` (e.g. the other image's correct description) are never returned;
    after a few draws that hit them, an extra group is added, which cannot match a description
    of a scene with as many groups as this one.
    """
    forbidden = set(forbidden_descriptions)
    for _ in range(_HALLUCINATION_ATTEMPTS):
        candidate = _hallucinate_once(scene, rng.choice(HALLUCINATION_KINDS), rng)
        if candidate is not None and describe_scene(candidate) not in forbidden:
            return candidate
    return _hallucinate_once(scene, "extra_group", rng)


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


def _scenes_for(rng: random.Random, avoid_scenes: set[str]) -> tuple[list[dict], list[dict]]:
    scene_1 = sample_scene(rng)
    while scene_key(scene_1) in avoid_scenes:
        scene_1 = sample_scene(rng)
    return scene_1, contrast_scene(scene_1, rng)


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
    scene_1, scene_2 = _scenes_for(rng, set(avoid_scenes))
    question = rng.choice(QUESTIONS)
    resp_1_w, resp_2_w = describe_scene(scene_1), describe_scene(scene_2)
    resp_1_l = describe_scene(hallucinated_scene(scene_1, rng, forbidden_descriptions=[resp_2_w]))
    resp_2_l = describe_scene(hallucinated_scene(scene_2, rng, forbidden_descriptions=[resp_1_w]))
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
