"""The synthetic hallucination data set: layout, determinism, images that match their scenes,
and responses that are right (``*_w``) or hallucinated (``*_l``) about them."""

import io
import json
import pickle
from collections import deque

import pytest
from PIL import Image

from symmpo.train.synthetic import (
    COLOUR_NAMES,
    COLOURS,
    PARTNERS,
    QUESTIONS,
    SHAPE_PLURALS,
    SHAPES,
    conforms,
    describe_scene,
    exact_rate,
    hallucination_rate,
    make_group,
    make_synthetic_records,
    missing_partners,
    parse_description,
    prior_hallucination_rate,
    scene_key,
    synthetic_splits,
)

RECORD_KEYS = {
    "idx",
    "question",
    "resp_1_w",
    "resp_1_l",
    "resp_2_w",
    "resp_2_l",
    "image_1",
    "image_2",
    "image_path_1",
    "image_path_2",
    "origin_dataset",
    "origin_split",
    "scene_1",
    "scene_2",
}


@pytest.fixture(scope="module")
def records():
    return make_synthetic_records(120, seed=7)


def decode(image_field: dict) -> Image.Image:
    return Image.open(io.BytesIO(image_field["bytes"]))


def blobs_per_colour(image: Image.Image) -> dict[str, int]:
    """Number of 4-connected regions of each palette colour (the drawn shapes)."""
    width, height = image.size
    pixels = image.load()
    name_of_rgb = {rgb: name for name, rgb in COLOURS.items()}
    seen = set()
    counts = dict.fromkeys(COLOUR_NAMES, 0)
    for y in range(height):
        for x in range(width):
            name = name_of_rgb.get(pixels[x, y])
            if name is None or (x, y) in seen:
                continue
            counts[name] += 1
            seen.add((x, y))
            queue = deque([(x, y)])
            while queue:
                px, py = queue.popleft()
                for nx, ny in ((px + 1, py), (px - 1, py), (px, py + 1), (px, py - 1)):
                    inside = 0 <= nx < width and 0 <= ny < height
                    if inside and (nx, ny) not in seen and pixels[nx, ny] == COLOURS[name]:
                        seen.add((nx, ny))
                        queue.append((nx, ny))
    return counts


def mentioned_objects(text: str) -> set[tuple]:
    return {(g["colour"], g["shape"], g["count"]) for g in parse_description(text)}


def scene_objects(scene: list[dict]) -> set[tuple]:
    return {(g["colour"], g["shape"], g["count"]) for g in scene}


def test_same_arguments_give_byte_identical_records():
    first = make_synthetic_records(30, seed=3, image_size=48, split="train", start_idx=5)
    second = make_synthetic_records(30, seed=3, image_size=48, split="train", start_idx=5)
    assert pickle.dumps(first) == pickle.dumps(second)


def test_different_seeds_give_different_records():
    seed_0 = make_synthetic_records(30, seed=0)
    seed_1 = make_synthetic_records(30, seed=1)
    differing = sum(a["resp_1_w"] != b["resp_1_w"] for a, b in zip(seed_0, seed_1, strict=True))
    assert differing > 20
    assert [r["image_1"]["bytes"] for r in seed_0] != [r["image_1"]["bytes"] for r in seed_1]


def test_a_record_does_not_depend_on_how_many_are_drawn():
    assert make_synthetic_records(12)[:5] == make_synthetic_records(5)


def test_records_have_the_released_layout(records):
    for i, record in enumerate(records):
        assert set(record) == RECORD_KEYS
        assert record["idx"] == i
        assert record["question"] in QUESTIONS
        for name in ("resp_1_w", "resp_1_l", "resp_2_w", "resp_2_l"):
            assert isinstance(record[name], str) and record[name].endswith(".")
        for name in ("image_1", "image_2"):
            assert set(record[name]) == {"bytes", "path"} and record[name]["path"] is None
            assert record[name]["bytes"].startswith(b"\x89PNG")
        assert record["image_path_1"] is None and record["image_path_2"] is None
        assert record["origin_dataset"] == "symmpo-synthetic"
        assert record["origin_split"] == "train"
        assert json.loads(json.dumps(record["scene_1"])) == record["scene_1"]
        for group in record["scene_1"] + record["scene_2"]:
            assert set(group) == {"shape", "colour", "count", "position"}
    assert {r["question"] for r in records} == set(QUESTIONS)
    assert {len(r["scene_1"]) for r in records} == {1, 2, 3}


@pytest.mark.parametrize("image_size", [64, 32])
def test_images_decode_to_rgb_of_the_requested_size(image_size):
    for record in make_synthetic_records(10, image_size=image_size):
        for name in ("image_1", "image_2"):
            image = decode(record[name])
            assert image.mode == "RGB"
            assert image.size == (image_size, image_size)


def test_images_show_exactly_the_scene_objects(records):
    """Each drawn shape is one separate blob of its group's colour, and nothing else is drawn."""
    for record in records[:40]:
        for scene, name in ((record["scene_1"], "image_1"), (record["scene_2"], "image_2")):
            expected = dict.fromkeys(COLOUR_NAMES, 0)
            for group in scene:
                expected[group["colour"]] += group["count"]
            assert blobs_per_colour(decode(record[name]).convert("RGB")) == expected


def _objects(scene) -> set[tuple[str, str]]:
    return {(g["colour"], g["shape"]) for g in scene}


def test_contrast_scene_keeps_or_breaks_the_prior_by_one_partner(records):
    """m' changes one group's count (both conform), or adds or removes one partner group, so
    that exactly one of m and m' breaks the prior."""
    kinds = set()
    for record in records:
        scene_1, scene_2 = record["scene_1"], record["scene_2"]
        assert decode(record["image_1"]).tobytes() != decode(record["image_2"]).tobytes()
        if len(scene_1) == len(scene_2):
            kinds.add("conforming")
            assert conforms(scene_1) and conforms(scene_2)
            changes = [
                (g1["position"], attribute)
                for g1, g2 in zip(scene_1, scene_2, strict=True)
                for attribute in ("shape", "colour", "count", "position")
                if g1[attribute] != g2[attribute]
            ]
            assert [attribute for _, attribute in changes] == ["count"], (scene_1, scene_2)
            continue
        small, large = sorted((scene_1, scene_2), key=len)
        kinds.add("partner_added" if small is scene_1 else "partner_removed")
        assert len(large) == len(small) + 1
        assert all(g in large for g in small)
        (extra,) = [g for g in large if g not in small]
        assert conforms(large) and not conforms(small)
        assert missing_partners(small) == [(extra["colour"], extra["shape"])]
    assert kinds == {"conforming", "partner_added", "partner_removed"}


def test_training_captions_carry_the_prior():
    """Most paired objects the training images show come with their partner."""
    train = make_synthetic_records(400, seed=1)
    shown = [o for r in train for s in (r["scene_1"], r["scene_2"]) for o in _objects(s)]
    with_partner = [
        PARTNERS[o] in _objects(s)
        for r in train
        for s in (r["scene_1"], r["scene_2"])
        for o in _objects(s)
        if o in PARTNERS
    ]
    assert len(with_partner) > len(shown) / 2
    assert sum(with_partner) / len(with_partner) > 0.75


def test_heldout_images_break_the_prior_half_the_time():
    _, heldout = synthetic_splits(n_train=64, n_heldout=200, seed=4)
    breaking = sum(not conforms(r["scene_1"]) for r in heldout) / len(heldout)
    assert 0.35 < breaking < 0.65


def test_chosen_responses_describe_their_scenes(records):
    for record in records:
        for scene, text in (
            (record["scene_1"], record["resp_1_w"]),
            (record["scene_2"], record["resp_2_w"]),
        ):
            assert parse_description(text) == scene
            words = set(text.rstrip(".").replace(",", "").split())
            for group in scene:
                assert group["colour"] in words
                assert group["shape"] in words or SHAPE_PLURALS[group["shape"]] in words
            for colour in set(COLOUR_NAMES) - {g["colour"] for g in scene}:
                assert colour not in words
        assert record["resp_2_w"] != record["resp_1_w"]


def test_rejected_responses_name_an_object_absent_from_their_scene(records):
    """y_l names one (colour, shape) the image lacks by construction, the missing partner when
    the scene breaks the prior, else an absent paired object: in place of a distractor (same
    count and region) when the scene has one, else as an extra group; the rest as drawn."""
    for record in records:
        for scene, text in (
            (record["scene_1"], record["resp_1_l"]),
            (record["scene_2"], record["resp_2_l"]),
        ):
            named = parse_description(text)
            (wrong,) = [g for g in named if g not in scene]
            absent = (wrong["colour"], wrong["shape"])
            assert absent not in _objects(scene) and absent in PARTNERS
            if not conforms(scene):
                assert absent in missing_partners(scene)
            distractors = [g for g in scene if (g["colour"], g["shape"]) not in PARTNERS]
            if distractors:  # substituted: same regions and counts, one distractor renamed
                assert len(named) == len(scene)
                (replaced,) = [g for g in scene if g not in named]
                assert replaced in distractors
                assert (replaced["count"], replaced["position"]) == (
                    wrong["count"],
                    wrong["position"],
                )
            else:
                assert len(named) == len(scene) + 1 and all(g in named for g in scene)
            assert hallucination_rate([text], [scene]) == 1.0
            assert exact_rate([text], [scene]) == 0.0
        # a rejected answer on one image is never the correct answer on the other image
        assert record["resp_1_l"] != record["resp_2_w"]
        assert record["resp_2_l"] != record["resp_1_w"]


def test_metrics_on_hand_made_answers():
    scene = [make_group("circle", "red", 2, "left"), make_group("square", "blue", 1, "top")]
    right = "There are two red circles on the left and one blue square at the top."
    wrong_count = "There are two red circles on the left and two blue squares at the top."
    partner_only = "There is one blue square at the top."
    absent = "There are two red circles on the left and one green square at the top."
    garbage = "t t t <0x9B>"
    answers = [right, wrong_count, partner_only, absent, garbage]
    assert hallucination_rate(answers, [scene] * 5) == pytest.approx(1 / 5)
    assert exact_rate(answers, [scene] * 5) == pytest.approx(1 / 5)
    assert exact_rate([" " + right + " "], [scene]) == 1.0


def test_prior_hallucinations_are_the_missing_partners_named():
    """The red circle's partner is the blue square (PARTNERS): naming it where it is absent is
    the prior's hallucination; naming another absent object is a misperception."""
    assert PARTNERS[("red", "circle")] == ("blue", "square")
    alone = [make_group("circle", "red", 2, "left")]
    partner = "There are two red circles on the left and one blue square at the top."
    other = "There are two red circles on the left and one green square at the top."
    answers = [partner, other, "There are two red circles on the left."]
    assert prior_hallucination_rate(answers, [alone] * 3) == pytest.approx(1 / 3)
    assert hallucination_rate(answers, [alone] * 3) == pytest.approx(2 / 3)
    both = [*alone, make_group("square", "blue", 1, "top")]  # the partner is there: no error
    assert prior_hallucination_rate([partner], [both]) == 0.0
    assert hallucination_rate([], []) == 0.0 and exact_rate([], []) == 0.0


def test_descriptions_use_correct_plurals_and_lists():
    two_groups = [make_group("square", "blue", 1, "right"), make_group("circle", "red", 2, "left")]
    assert describe_scene(two_groups) == (
        "There are two red circles on the left and one blue square on the right."
    )
    assert describe_scene([make_group("triangle", "green", 1, "center")]) == (
        "There is one green triangle in the center."
    )
    three_groups = [
        make_group("triangle", "yellow", 3, "bottom"),
        make_group("square", "purple", 1, "top"),
        make_group("circle", "blue", 1, "left"),
    ]
    assert describe_scene(three_groups) == (
        "There is one blue circle on the left, one purple square at the top "
        "and three yellow triangles at the bottom."
    )
    assert parse_description(describe_scene(three_groups)) == sorted(
        three_groups,
        key=lambda g: ["left", "right", "top", "bottom", "center"].index(g["position"]),
    )


def test_every_shape_and_colour_is_used(records):
    groups = [g for r in records for g in r["scene_1"] + r["scene_2"]]
    assert {g["shape"] for g in groups} == set(SHAPES)
    assert {g["colour"] for g in groups} == set(COLOUR_NAMES)
    assert {g["count"] for g in groups} == {1, 2, 3}


def test_heldout_split_is_disjoint_from_train():
    train, heldout = synthetic_splits(n_train=48, n_heldout=24, seed=2)
    assert [r["idx"] for r in train] == list(range(48))
    assert [r["idx"] for r in heldout] == list(range(48, 72))
    assert {r["origin_split"] for r in train} == {"train"}
    assert {r["origin_split"] for r in heldout} == {"heldout"}
    train_scenes = {scene_key(r["scene_1"]) for r in train}
    assert not train_scenes & {scene_key(r["scene_1"]) for r in heldout}
    # a different generator stream: not the training stream continued at the same idx
    continued = make_synthetic_records(24, seed=2, split="train", start_idx=48)
    assert [r["resp_1_w"] for r in continued] != [r["resp_1_w"] for r in heldout]


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        make_synthetic_records(-1)
    with pytest.raises(ValueError, match="image_size"):
        make_synthetic_records(1, image_size=8)
