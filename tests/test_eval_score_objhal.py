"""symmpo.eval.scorers.objhal: Object HalBench by the released SymMPO scorer's rules.

A small benchmark folder is built here (a synonym file of our own, COCO-style instance and
caption annotations, a question file with base64 images), and the expected Resp./Ment. of each
answers file are worked out by hand from the released algorithm in the comments."""

import base64
import json

import pytest

from symmpo.eval.judge import Judge
from symmpo.eval.scorers import Question, objhal, scorer

SYNONYMS = """person, man, woman, child, people, children, kid
dog, puppy
cat, kitten
elephant
train, locomotive
toilet, urinal
chair, seat, stool
mouse
knife, knive
bird, goose, duck
cow, ox, cattle
vase
hot dog
dining table, table, desk
wine glass
tie, bow, bow tie
cell phone, phone, iPhone
"""

CATEGORIES = {1: "person", 18: "dog", 22: "elephant", 46: "wine glass", 67: "dining table"}
CATEGORIES |= {70: "toilet", 74: "mouse"}
INSTANCES = {  # image id -> instance categories (val split 101-102, train split 103-104)
    101: [1, 18, 18],
    102: [22],
    103: [70],
    104: [67, 46, 74],
}
CAPTIONS = {
    101: "A man walking a dog.",  # person, dog: nothing new
    102: "Elephants walk along the train tracks.",  # elephant; "train track" names no train
    103: "A toilet seat left up.",  # "toilet seat" -> toilet
    104: "A kitten on a desk.",  # kitten -> cat (only from the caption), desk -> dining table
}
# Ground truth, so: 101 {person, dog}; 102 {elephant}; 103 {toilet};
# 104 {dining table, wine glass, mouse, cat}.
IMAGES = {101: b"\xff\xd8 jpeg 101", 102: b"\xff\xd8 jpeg 102", 103: b"jpeg 103", 104: b"104"}
QUESTION = "Provide a thorough description of the given image."


def coco(split_ids, make):
    return {
        "info": {},
        "licenses": [],
        "images": [{"id": i} for i in split_ids],
        "annotations": [note for i in split_ids for note in make(i)],
    }


@pytest.fixture
def bench(tmp_path):
    (tmp_path / "synonyms_refine.txt").write_text(SYNONYMS)
    folder = tmp_path / "annotations"
    folder.mkdir()
    for split, ids in (("val", (101, 102)), ("train", (103, 104))):
        instances = coco(ids, lambda i: [{"image_id": i, "category_id": c} for c in INSTANCES[i]])
        instances["categories"] = [{"id": k, "name": v} for k, v in CATEGORIES.items()]
        captions = coco(ids, lambda i: [{"image_id": i, "caption": CAPTIONS[i]}])
        (folder / f"instances_{split}2014.json").write_text(json.dumps(instances))
        (folder / f"captions_{split}2014.json").write_text(json.dumps(captions))
    with open(tmp_path / "obj_halbench_300_with_image.jsonl", "w") as f:
        for image_id, image in IMAGES.items():
            row = {"image_id": image_id, "question": QUESTION}
            f.write(json.dumps(row | {"image": base64.b64encode(image).decode()}) + "\n")
    return tmp_path


def answers_file(path, pairs):
    """An answers file as the released generation script writes it."""
    rows = [
        {"question_id": i, "image_id": image_id, "prompt": QUESTION, "text": text, "model_id": "m"}
        for i, (image_id, text) in enumerate(pairs)
    ]
    objhal.write_answers(rows, path)
    return path


def matcher_for(text=SYNONYMS):
    return objhal.Matcher(objhal.Vocabulary(text.splitlines(keepends=True)))


# -- questions and answers files -----------------------------------------------------------------


def test_questions_decode_base64_images_and_answers_round_trip(bench, tmp_path):
    assert scorer("objhal") is objhal
    questions = objhal.load_questions(bench)
    assert [q.id for q in questions] == [0, 1, 2, 3]  # the released answers' question_id
    assert [q.image for q in questions] == list(IMAGES.values())  # bytes, decoded
    assert {q.prompt for q in questions} == {QUESTION}
    assert [q.fields for q in questions] == [{"image_id": i} for i in IMAGES]
    assert isinstance(questions[0], Question)

    rows = [objhal.answer_row(q, f"answer {q.id}") for q in questions]
    objhal.write_answers(rows, tmp_path / "answers.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert lines[1] == {
        "question_id": 1,
        "image_id": 102,
        "prompt": QUESTION,
        "text": "answer 1",
        "model_id": "symmpo",
    }
    caps = objhal.read_answers(tmp_path / "answers.jsonl", bench)
    assert caps[3] == {"image_id": 104, "question": QUESTION, "caption": "answer 3"}


def test_answers_without_image_id_take_the_question_files(bench):
    rows = [{"question": "q", "answer": "Assistant: two dogs "}, {"prompt": "p", "text": "x"}]
    caps = objhal.read_answers(rows, bench)
    assert caps == [
        {"image_id": 101, "question": "q", "caption": "two dogs"},  # "Assistant:" removed
        {"image_id": 102, "question": "p", "caption": "x"},
    ]


# -- the rule-based matcher ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        # "men": WordNet lists "men" as a noun of its own, and the lemmatizer keeps the shortest
        # noun, first on ties ("men" before "man"): no person. "dogs." at a sentence's end.
        ("Two MEN and a Woman walk their dogs.", [("woman", "person"), ("dog", "dog")]),
        # irregular plurals from WordNet's exception list; "vases" -> "vas" (the shorter noun)
        (
            "Children, mice, geese, oxen, knives and vases.",
            [("child", "person"), ("mouse", "mouse"), ("goose", "bird"), ("ox", "cow")]
            + [("knife", "knife")],
        ),
        # two-word phrases: a synonym, "baby X", "bow tie" -> tie; "train tracks" names nothing
        (
            "A baby elephant, a hot dog, a bow tie, train tracks, a wine glass.",
            [("elephant", "elephant"), ("hot dog", "hot dog"), ("tie", "tie")]
            + [("wine glass", "wine glass")],
        ),
        # toilet seat -> toilet; with "toilet" there, a lone "seat" is no chair
        ("The toilet seat is up; the seat of the toilet.", [("toilet", "toilet")] * 2),
        ("A seat and a stool.", [("seat", "chair"), ("stool", "chair")]),
        # hyphenated words stay whole; "cat/dog" too (the Treebank rules keep them)
        ("A hot-dog stand, a cat-like toy, a cat/dog bowl.", []),
        # the possessive and a closing quote are split off; repeats all count
        ("The dog's \"puppy\" and the dogs' puppy.", [("dog", "dog"), ("puppy", "dog")] * 2),
        # synonyms are compared lower-cased text to file entry: "iPhone" never matches
        ("An iPhone and a phone.", [("phone", "cell phone")]),
        ("", []),
    ],
)
def test_rule_mentions(caption, expected):
    assert matcher_for().mentions(caption) == expected


def test_ground_truth_joins_instances_and_captions(bench):
    matcher = objhal.Matcher(objhal.Vocabulary.load(bench / "synonyms_refine.txt"))
    truth = objhal.ground_truth([101, 102, 103, 104], bench, matcher)
    assert truth == {
        101: {"person", "dog"},
        102: {"elephant"},
        103: {"toilet"},
        104: {"dining table", "wine glass", "mouse", "cat"},
    }


def test_rule_based_score(bench, tmp_path):
    path = answers_file(
        tmp_path / "answers.jsonl",
        [
            # men: none; woman: person ok; dogs, dog, puppy: dog ok x3; cat: not in 101 -> 5, 1 bad
            (101, "Two men and a woman walk their dogs. The dog is a puppy; a cat watches them."),
            # baby elephant -> elephant ok; "train tracks" nothing; "Hot-Dog" one word -> 1, 0
            (102, "Assistant: A baby elephant stands on train tracks beside a Hot-Dog cart."),
            # toilet seat -> toilet, "seat" dropped, toilet -> 2 mentions, 0 bad
            (103, "The toilet seat is up, and the seat of the toilet is white."),
            # children -> person (bad), MICE -> mouse ok, geese -> bird (bad), knives -> knife
            # (bad), wine glasses -> wine glass ok, table -> dining table ok -> 6, 3 bad
            (104, "CHILDREN chase MICE and geese with knives near the wine glasses on a table."),
            (101, ""),  # empty: no object, out of Resp.'s denominator
            (102, "It is a sunny day with clear skies."),  # no COCO object either
            # vases -> "vas": nothing; bow tie -> tie (bad); cat-like: nothing -> 1, 1 bad
            (103, "Vases, a bow tie and a cat-like statue."),
            # kitten twice: cat, in 104's captions -> 2 mentions, 0 bad
            (104, "A kitten sleeps. The Kitten wakes."),
        ],
    )
    # Resp.: answers naming an object: 6 (all but the empty and the sky one); hallucinating: the
    # first, fourth and seventh = 3 -> 3 / 6 = 50 %.
    # Ment.: mentions 5 + 1 + 2 + 6 + 1 + 2 = 17; hallucinated 1 + 0 + 0 + 3 + 1 + 0 = 5.
    result = objhal.score(str(path), bench)
    assert result == {"objhal_resp": pytest.approx(50.0), "objhal_ment": pytest.approx(500 / 17)}


def test_no_answer_with_an_object_is_an_error(bench, tmp_path):
    path = answers_file(tmp_path / "answers.jsonl", [(101, "Nothing here."), (102, "")])
    with pytest.raises(ValueError, match="no answer names a COCO object"):
        objhal.score(path, bench)


def test_missing_annotations_are_named(bench, tmp_path):
    (bench / "annotations" / "captions_train2014.json").unlink()
    path = answers_file(tmp_path / "answers.jsonl", [(101, "A dog.")])
    with pytest.raises(FileNotFoundError, match="captions_train2014"):
        objhal.score(path, bench)


# -- the GPT route -------------------------------------------------------------------------------

GPT_ANSWERS = [
    (101, "A man plays with two dogs and a red frisbee in the park."),
    (102, "Two elephants walk beside the railway on a sunny day."),
    (103, "A white toilet."),  # three words: not sent, no objects
    (104, "A person sits at the table with a kid, and a toilet seat is nearby."),
    (101, "There is nothing else to see here at all."),
]
GPT_REPLIES = {
    # man -> person ok; dogs -> dog ok; "red frisbee" -> frisbee: no synonym; the second "man"
    # and "dog" are the same objects again -> 2 mentions, 0 bad
    0: '["man", "dogs", "red frisbee", "man", "dog"]',
    # not JSON, but its last line is: baby elephant -> elephant ok; train tracks -> "train
    # track": no synonym; elephant again: once -> 1 mention, 0 bad
    1: 'The objects are:\n["baby elephant", "train tracks", "elephant"]',
    # person (bad), kid -> person (bad), toilet seat -> toilet (bad), kitten -> cat ok,
    # table -> dining table ok -> 5 mentions, 3 bad
    3: '["person", "kid", "toilet seat", "kitten", "table"]',
    4: "[]",
}


def write_replies(path, replies):
    with open(path, "w") as f:
        for key, reply in replies.items():
            f.write(json.dumps({"id": key, "reply": reply}) + "\n")
    return str(path)


def test_gpt_route_with_an_offline_judge(bench, tmp_path):
    path = answers_file(tmp_path / "answers.jsonl", GPT_ANSWERS)
    judge = Judge(
        requests_out=str(tmp_path / "requests.jsonl"),
        replies_in=write_replies(tmp_path / "replies.jsonl", GPT_REPLIES),
    )
    result = objhal.score(path, bench, judge=judge)
    # Resp.: answers with an object: 0, 1, 3; hallucinating: 3 -> 1 / 3.
    # Ment.: 2 + 1 + 5 = 8 mentions, 3 hallucinated -> 3 / 8.
    assert result == {"objhal_resp": pytest.approx(100 / 3), "objhal_ment": pytest.approx(37.5)}

    requests = [json.loads(x) for x in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert [r["id"] for r in requests] == [0, 1, 3, 4]  # the three-word answer is not asked
    messages = requests[0]["messages"]
    assert len(messages) == 1 and messages[0]["role"] == "system"
    prompt = messages[0]["content"]
    assert prompt == objhal.PROMPT_TEMPLATE.replace("{question}", QUESTION).replace(
        "{answer}", GPT_ANSWERS[0][1]
    )
    assert prompt.startswith("You are an expert in image objects extraction according to a")
    assert f"[Start of Question]\n\n<image> {QUESTION}\n\n[End of Question]" in prompt
    assert f"[Start of Examiner's Answer]\n\n{GPT_ANSWERS[0][1]}\n\n[End of" in prompt
    assert 'JSON list format: ["object_1", ..., "object_n"].\n5. You should return' in prompt
    assert prompt.endswith("an empty JSON list () if no visible objects can be found.\n")


def test_gpt_route_reads_names_as_spacy_would():
    matcher = matcher_for()
    assert matcher.name_objects("baby elephant") == ["elephant"]
    assert matcher.name_objects("train tracks") == ["train track"]
    assert matcher.name_objects("wine glasses") == ["wine glass"]
    assert matcher.name_objects("red car") == ["car"]
    assert matcher.name_objects("dog leash") == ["dog leash"]  # a compound: no synonym
    assert matcher.name_objects("men") == ["man"]  # spaCy takes the exception form
    assert matcher.name_objects("iPhone") == ["iPhone"]  # a proper noun keeps its spelling
    # "toilet" and "seat" both extracted: the seat is no chair
    assert matcher.extracted_mentions(["toilet", "seat", "dog"]) == [
        ("toilet", "toilet"),
        ("dog", "dog"),
    ]


def test_gpt_route_bad_replies(bench, tmp_path):
    path = answers_file(tmp_path / "answers.jsonl", GPT_ANSWERS)
    replies = GPT_REPLIES | {3: "a person, a kid"}
    judge = Judge(replies_in=write_replies(tmp_path / "replies.jsonl", replies))
    with pytest.raises(ValueError, match="answer 3"):
        objhal.score(path, bench, judge=judge)

    class OnlineJudge:  # asked again while a reply is no JSON, as the released script retries
        url = "http://judge"

        def __init__(self):
            self.asked = []

        def ask(self, requests):
            self.asked.append(sorted(requests))
            if len(self.asked) == 1:
                return {key: "sorry" if key == 3 else GPT_REPLIES[key] for key in requests}
            return {key: GPT_REPLIES[key] for key in requests}

    online = OnlineJudge()
    result = objhal.score(path, bench, judge=online)
    assert online.asked == [[0, 1, 3, 4], [3]]
    assert result == {"objhal_resp": pytest.approx(100 / 3), "objhal_ment": pytest.approx(37.5)}
