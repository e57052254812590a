"""The synthetic world's rules: its objects, the language prior its scenes follow, and how a
contrastive scene and a hallucination depart from a scene.

An object is a (colour, shape) pair. Ten of the fifteen are paired by ``PARTNERS``: in most
scenes a paired object comes with its partner (the red circle with the blue square, ...). The
five others (``DISTRACTORS``) have no partner. A scene is 1 to 3 groups ({"shape", "colour",
"count", "position"}), each in its own region, no two with the same object. A scene *conforms*
to the prior when every paired object in it has its partner too, and *breaks* it otherwise.

The prior is what a model that leans on text learns: having named one object of a pair, name the
other. On a scene that breaks the prior, that is a hallucination: ``prior_hallucination`` names
the absent partner (absent by construction). Records (``symmpo.train.synthetic``) are of three
kinds, ``RECORD_KINDS``:

- ``"conforming"``: m and m' both conform; m' changes one group's count;
- ``"partner_removed"``: m conforms, m' breaks the prior: one partner removed;
- ``"partner_added"``: m breaks the prior, m' conforms: the missing partner added.

Each split draws the kinds with its own weights (``KIND_WEIGHTS``); a scene breaks the prior in
the training data rarely enough that the prior is what the captions teach.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable

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

#: Counts a group may have, spelled out.
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
MAX_COUNT = max(COUNT_WORDS)
MAX_GROUPS = 3

#: Regions of the image, in the order a description lists them.
POSITIONS = ("left", "right", "top", "bottom", "center")

#: The language prior: objects that usually come together, as (colour, shape) pairs.
PARTNER_PAIRS = (
    (("red", "circle"), ("blue", "square")),
    (("green", "triangle"), ("yellow", "circle")),
    (("purple", "square"), ("red", "triangle")),
    (("blue", "circle"), ("green", "square")),
    (("yellow", "triangle"), ("purple", "circle")),
)
PARTNERS = {a: b for a, b in PARTNER_PAIRS} | {b: a for a, b in PARTNER_PAIRS}
OBJECTS = tuple((c, s) for c in COLOUR_NAMES for s in SHAPES)
DISTRACTORS = tuple(o for o in OBJECTS if o not in PARTNERS)

RECORD_KINDS = ("conforming", "partner_removed", "partner_added")
#: Per split, the weight of each record kind (in ``RECORD_KINDS`` order).
KIND_WEIGHTS = {"train": (0.6, 0.2, 0.2), "heldout": (0.0, 0.5, 0.5)}


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


def scene_objects(scene: Iterable[dict]) -> set[tuple[str, str]]:
    """The (colour, shape) objects a scene holds."""
    return {(group["colour"], group["shape"]) for group in scene}


def missing_partners(scene: Iterable[dict]) -> list[tuple[str, str]]:
    """Partners of the scene's paired objects that the scene lacks (empty: it conforms)."""
    objects = scene_objects(scene)
    return sorted({PARTNERS[o] for o in objects if o in PARTNERS} - objects)


def conforms(scene: Iterable[dict]) -> bool:
    """Whether every paired object of the scene has its partner in it."""
    return not missing_partners(scene)


def free_positions(scene: Iterable[dict]) -> list[str]:
    """Regions no group of the scene occupies, in description order."""
    taken = {group["position"] for group in scene}
    return [p for p in POSITIONS if p not in taken]


def _place(objects: list[tuple[str, str]], rng: random.Random) -> list[dict]:
    """The objects as groups in distinct random regions with random counts."""
    positions = rng.sample(POSITIONS, len(objects))
    return canonical_scene(
        make_group(shape, colour, rng.randint(1, MAX_COUNT), position)
        for (colour, shape), position in zip(objects, positions, strict=True)
    )


def conforming_scene(rng: random.Random) -> list[dict]:
    """A partner pair, and a distractor half of the time (2 or 3 groups)."""
    first, second = rng.choice(PARTNER_PAIRS)
    objects = [first, second] + ([rng.choice(DISTRACTORS)] if rng.random() < 0.5 else [])
    return _place(objects, rng)


def breaking_scene(rng: random.Random) -> list[dict]:
    """One paired object without its partner, and 0 to 2 distractors (1 to 3 groups)."""
    paired = rng.choice(sorted(PARTNERS))
    distractors = rng.sample(DISTRACTORS, rng.randint(0, MAX_GROUPS - 1))
    return _place([paired, *distractors], rng)


def sample_scene(rng: random.Random, split: str = "train") -> list[dict]:
    """A scene of a random record kind of ``split``: its image m (see ``scenes_of_kind``)."""
    return scenes_of_kind(sample_kind(rng, split), rng)[0]


def sample_kind(rng: random.Random, split: str = "train") -> str:
    """A record kind drawn with ``split``'s weights (unknown splits: the training weights)."""
    weights = KIND_WEIGHTS.get(split, KIND_WEIGHTS["train"])
    return rng.choices(RECORD_KINDS, weights=weights)[0]


def _with_count_changed(scene: list[dict], rng: random.Random) -> list[dict]:
    """The scene with one random group's count changed."""
    changed = [dict(group) for group in scene]
    group = rng.choice(changed)
    group["count"] = rng.choice([k for k in COUNT_WORDS if k != group["count"]])
    return canonical_scene(changed)


def scenes_of_kind(kind: str, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(scene 1 for m, scene 2 for m') of a record kind (see the module docstring)."""
    if kind == "conforming":
        scene = conforming_scene(rng)
        return scene, _with_count_changed(scene, rng)
    if kind == "partner_removed":
        scene = conforming_scene(rng)
        paired = [g for g in scene if (g["colour"], g["shape"]) in PARTNERS]
        removed = rng.choice(paired)
        return scene, canonical_scene(g for g in scene if g is not removed)
    if kind == "partner_added":
        scene = breaking_scene(rng)
        while len(scene) == MAX_GROUPS:  # room for the partner
            scene = breaking_scene(rng)
        colour, shape = missing_partners(scene)[0]
        partner = make_group(
            shape, colour, rng.randint(1, MAX_COUNT), rng.choice(free_positions(scene))
        )
        return scene, canonical_scene([*scene, partner])
    raise ValueError(f"unknown record kind {kind!r}; known: {RECORD_KINDS}")


def _substituted(scene: list[dict], index: int, obj: tuple[str, str]) -> list[dict]:
    """The scene with group ``index`` showing object ``obj`` (count and region kept)."""
    changed = [dict(group) for group in scene]
    changed[index]["colour"], changed[index]["shape"] = obj
    return canonical_scene(changed)


def prior_hallucination(
    scene: list[dict], rng: random.Random, forbidden: Iterable[str] = ()
) -> list[dict]:
    """The scene a prior-driven answer describes: one absent object named, the missing partner
    of a paired object when the scene has one, else an absent paired object (the objects the
    captions name most).

    The object is named in place of a distractor (its count and region kept: the mistake a
    model that leans on text makes) when the scene has one, else added in a free region
    (scenes have at most 3 groups in 5 regions). ``forbidden``: ``scene_key`` values never
    returned (e.g. the other image's scene) while another choice exists. The named
    (colour, shape) is absent from ``scene`` by construction.
    """
    forbidden = set(forbidden)
    objects = scene_objects(scene)
    candidates = missing_partners(scene) or sorted(o for o in PARTNERS if o not in objects)
    colour, shape = rng.choice(candidates)
    distractors = [i for i, g in enumerate(scene) if (g["colour"], g["shape"]) not in PARTNERS]
    options = [_substituted(scene, i, (colour, shape)) for i in distractors]
    if not options:
        options = [
            canonical_scene([*scene, make_group(shape, colour, count, position)])
            for position in free_positions(scene)
            for count in COUNT_WORDS
        ]
    allowed = [s for s in options if scene_key(s) not in forbidden]
    return rng.choice(allowed or options)
