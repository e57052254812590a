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
    QUESTIONS,
    SHAPE_PLURALS,
    SHAPES,
    describe_scene,
    make_group,
    make_synthetic_records,
    parse_description,
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


def test_contrast_scene_differs_in_exactly_one_attribute_of_one_group(records):
    for record in records:
        scene_1, scene_2 = record["scene_1"], record["scene_2"]
        assert [g["position"] for g in scene_1] == [g["position"] for g in scene_2]
        changes = [
            (g1["position"], attribute)
            for g1, g2 in zip(scene_1, scene_2, strict=True)
            for attribute in ("shape", "colour", "count")
            if g1[attribute] != g2[attribute]
        ]
        assert len(changes) == 1, (scene_1, scene_2)
        assert decode(record["image_1"]).tobytes() != decode(record["image_2"]).tobytes()


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


def test_rejected_responses_mention_something_absent_from_their_scene(records):
    for record in records:
        for scene, text in (
            (record["scene_1"], record["resp_1_l"]),
            (record["scene_2"], record["resp_2_l"]),
        ):
            assert mentioned_objects(text) - scene_objects(scene), (scene, text)
            assert text != describe_scene(scene)
        # a rejected answer on one image is never the correct answer on the other image
        assert record["resp_1_l"] != record["resp_2_w"]
        assert record["resp_2_l"] != record["resp_1_w"]


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
