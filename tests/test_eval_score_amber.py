"""AMBER scorer (symmpo.eval.scorers.amber): questions, the answers file, and metrics computed by
hand from AMBER's official algorithm on tiny constructed benchmark folders.

Generative expectations run the documented approximation (``approximate=True``: rule-based noun
filter, suffix-rule lemmas with WordNet's irregular forms, identical-word similarity); the
sentences are chosen so that nltk's tagger and WordNet would read them the same way."""

import importlib.util
import json

import pytest

from symmpo.eval.scorers import Question, amber, scorer
from symmpo.eval.scorers.amber import generative_counts, normalize_yes_no
from symmpo.eval.scorers.amber_words import (
    approximate_lemma,
    approximate_nouns,
    language_tools,
)

RELATION = {
    "person": ["people", "man", "woman"],
    "man": ["person", "people"],
    "child": ["kid", "person"],
    "dog": [],
    "cat": [],
    "bus": ["car", "vehicle"],
    "car": ["vehicle"],
    "mouse": ["computer"],
    "watch": [],
    "bird": [],
    "ship": ["boat"],
    "tree": ["forest"],
    "air-conditioning": [],
    "sign": [],
}
SAFE_WORDS = ["sign", "light"]
VOCABULARY = frozenset(RELATION) | {w for words in RELATION.values() for w in words}

GENERATIVE = {
    1: {"truth": ["person", "dog"], "hallu": ["cat", "bus"]},
    2: {"truth": ["ship", "ship", "tree"], "hallu": ["bus", "air-conditioning"]},
    3: {"truth": ["watch", "sign"], "hallu": ["dog"]},
    4: {"truth": ["dog"], "hallu": ["cat"]},
}
# yes/no questions: id -> (truth, answer)
DISCRIMINATIVE = {
    1005: ("yes", "Yes, there is a dog."),
    1006: ("no", "No, there is no cat."),
    1007: ("no", "Yes"),
    1008: ("yes", "No."),
    1009: ("no", "I cannot tell from the picture."),
    1010: ("yes", "It is hard to say"),
}
ANSWERS = {
    1: "Two children play with a dog. The dog watches the mice. Dogs bark near a man.",
    2: "A ship, another ship and a boat are near two buses and an air-conditioning.",
    3: "A woman watches a bird and wears a watch near a sign.",
    4: "",
    **{qid: answer for qid, (_, answer) in DISCRIMINATIVE.items()},
}


def make_benchmark(root, query_all=True, images="image", subfolder="query"):
    """A tiny AMBER folder: annotations.json, relation.json, safe_words.txt, the query files
    (under ``subfolder``) and an (empty) image folder."""
    root.mkdir(parents=True, exist_ok=True)
    notes = [{"id": i, "type": "generative", **note} for i, note in GENERATIVE.items()]
    kinds = ["discriminative-hallucination", "discriminative-attribute-state", "relation"]
    notes += [
        {"id": i, "type": kinds[i % 3], "truth": truth} for i, (truth, _) in DISCRIMINATIVE.items()
    ]
    (root / "annotations.json").write_text(json.dumps(notes))
    (root / "relation.json").write_text(json.dumps(RELATION))
    (root / "safe_words.txt").write_text("\n".join(SAFE_WORDS))
    (root / images).mkdir(exist_ok=True)
    generative = [
        {"id": i, "image": f"AMBER_{i}.jpg", "query": "Describe this image."} for i in GENERATIVE
    ]
    discriminative = [
        {"id": i, "image": f"AMBER_{i - 1004}.jpg", "query": f"Question {i}?"}
        for i in DISCRIMINATIVE
    ]
    folder = root / subfolder
    folder.mkdir(exist_ok=True)
    if query_all:
        (folder / "query_all.json").write_text(json.dumps(generative + discriminative))
    else:
        (folder / "query_generative.json").write_text(json.dumps(generative))
        (folder / "query_discriminative.json").write_text(json.dumps(discriminative))
    return root


def counts(answer, truth, hallu):
    tools = language_tools(True)
    nouns = tools.nouns(answer, VOCABULARY)
    note = {"truth": truth, "hallu": hallu}
    return generative_counts(
        nouns, note, RELATION, VOCABULARY, frozenset(SAFE_WORDS), tools.similar
    )


# -- questions and the answers file -----------------------------------------------------------


def test_load_questions_query_all(tmp_path):
    root = make_benchmark(tmp_path / "amber")
    questions = amber.load_questions(root)
    assert [q.id for q in questions] == [*GENERATIVE, *DISCRIMINATIVE]
    first, yes_no = questions[0], questions[len(GENERATIVE)]
    assert first.image == "image/AMBER_1.jpg" and first.prompt == "Describe this image."
    assert first.fields == {"task": "generative"}
    assert yes_no.id == 1005 and yes_no.image == "image/AMBER_1.jpg"
    assert yes_no.prompt == "Question 1005?" and yes_no.fields == {"task": "discriminative"}
    assert [q.id for q in amber.load_questions(root, task="generative")] == [*GENERATIVE]
    assert [q.id for q in amber.load_questions(root, "discriminative")] == [*DISCRIMINATIVE]
    assert scorer("amber") is amber


def test_load_questions_separate_files_and_layouts(tmp_path):
    # AMBER's repository layout: files at the top, no query_all.json, images under images/
    root = make_benchmark(tmp_path / "amber", query_all=False, images="images", subfolder="")
    (root / "annotations.json").unlink()  # the task then comes from the file name
    questions = amber.load_questions(root)
    assert [q.id for q in questions] == [*GENERATIVE, *DISCRIMINATIVE]
    assert questions[0].image == "images/AMBER_1.jpg"
    assert {q.fields["task"] for q in questions[: len(GENERATIVE)]} == {"generative"}
    assert {q.fields["task"] for q in questions[len(GENERATIVE) :]} == {"discriminative"}
    with pytest.raises(FileNotFoundError):
        amber.load_questions(tmp_path / "nothing")


def test_answers_file_is_what_the_official_reader_reads(tmp_path):
    root = make_benchmark(tmp_path / "amber")
    questions = amber.load_questions(root)
    rows = [amber.answer_row(q, ANSWERS[q.id]) for q in questions]
    path = tmp_path / "answers.json"
    amber.write_answers(rows, path)
    data = json.load(open(path, encoding="utf-8"))  # the official reader: json.load, a list
    assert isinstance(data, list) and len(data) == len(questions)
    assert all(set(row) == {"id", "response"} and isinstance(row["id"], int) for row in data)
    by_id = {row["id"]: row["response"] for row in data}
    assert by_id[1] == ANSWERS[1]  # a description is kept as it is
    assert by_id[4] == ""
    # yes/no answers reduced to what the official scorer compares against ("Yes" / "No")
    assert [by_id[i] for i in DISCRIMINATIVE] == ["Yes", "No", "Yes", "No", "No", ANSWERS[1010]]
    # a hand-made Question without fields falls back on AMBER's id ranges
    assert amber.answer_row(Question(2000, None, "q?"), "yes.") == {"id": 2000, "response": "Yes"}
    # scoring the file, its rows, or {id: raw answer} gives the same numbers
    from_file = amber.score(path, root, approximate=True)
    assert amber.score(rows, root, approximate=True) == from_file
    assert amber.score(ANSWERS, root, approximate=True) == from_file
    lines = tmp_path / "answers.jsonl"
    lines.write_text("".join(json.dumps(row) + "\n" for row in data))
    assert amber.score(lines, root, approximate=True) == from_file


# -- the yes/no task --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes", "Yes"),
        ("No", "No"),
        ("no.", "No"),
        ("Yes, there is a dog.", "Yes"),  # "yes" in the first 5 characters
        ("No, there is no cat.", "No"),
        ("There is a dog here, yes", "Yes"),  # in the last 5
        ("There is not a cat in it.", "No"),  # anywhere: "not" holds "no"
        ("I cannot tell from the picture.", "No"),  # "cannot" holds "no"
        ("", "Yes"),  # under 8 characters with neither: "Yes"
        ("Maybe", "Yes"),
        ("It is hard to say", "It is hard to say"),  # neither: kept, then counted wrong
    ],
)
def test_normalize_yes_no(text, expected):
    assert normalize_yes_no(text) == expected
    assert normalize_yes_no(normalize_yes_no(text)) == expected  # idempotent


def test_discriminative_by_hand(tmp_path):
    root = make_benchmark(tmp_path / "amber")
    answers = {i: answer for i, (_, answer) in DISCRIMINATIVE.items()}
    result = amber.score(answers, root)
    # after normalising: 1005 Yes (yes: right), 1006 No (no: right), 1007 Yes (no: wrong),
    # 1008 No (yes: wrong), 1009 No (no: right), 1010 unchanged (yes: wrong).
    # "No" is the positive label. Denominators start at 0.001 (AMBER's metrics.txt).
    accuracy = round(3 / (6 + 0.001) * 100, 1)  # right: 1005, 1006, 1009
    precision = round(2 / (3 + 0.001) * 100, 1)  # answered "No": 1006, 1008, 1009; right: 2
    recall = round(2 / (3 + 0.001) * 100, 1)  # truth "no": 1006, 1007, 1009; answered "No": 2
    f1 = round(2 * 0.666 * 0.666 / (0.666 + 0.666 + 0.0001) * 100, 1)  # from the rounded P, R
    assert (accuracy, precision, recall, f1) == (50.0, 66.6, 66.6, 66.6)  # 66.6, not 66.7
    assert result["amber_accuracy"] == accuracy
    assert result["amber_precision"] == precision
    assert result["amber_recall"] == recall
    assert result["amber_f1"] == f1
    assert result["amber_discriminative"] == 6 and result["amber_generative"] == 0
    assert "amber_chair" not in result  # no generative answer, no generative keys
    assert result["amber_approximate"] is False  # nothing to approximate


# -- the generative task ----------------------------------------------------------------------


def test_lemmas_follow_wordnet():
    # WordNet 3.0's noun lemmas, as nltk's WordNetLemmatizer gives them
    vocabulary = VOCABULARY | {"glass", "bench", "leave", "vase", "streetlamp", "people", "men"}
    expected = {
        "children": "child",
        "mice": "mouse",
        "buses": "bus",
        "glasses": "glass",
        "benches": "bench",
        "dogs": "dog",
        "watches": "watch",
        "dog": "dog",
        "bus": "bus",
        "people": "people",
        "men": "men",  # WordNet keeps "men": it is a noun of its own
        "women": "woman",
        "leaves": "leaf",  # not AMBER's "leave"
        "vases": "vas",  # WordNet's shortest lemma
        "streetlamp": "streetlamp",  # not a WordNet noun: kept as it is
        "streetlamps": "streetlamps",  # ... and its plural is not reduced to it
        "Dogs": "Dogs",  # case is kept: WordNet's words are lower-case
        "Dog": "Dog",
        "air-conditioning": "air-conditioning",
    }
    assert {word: approximate_lemma(word, vocabulary) for word in expected} == expected


def test_approximate_noun_filter():
    nouns = approximate_nouns("The man watches the birds. Two watches lie on a table.")
    assert nouns.count("watches") == 1  # the verb is dropped, the noun kept
    assert "man" in nouns and "birds" in nouns and "table" in nouns
    assert "can" not in approximate_nouns("He can see a dog.")  # the modal
    assert "can" in approximate_nouns("A can of soda.")
    assert "sailing" not in approximate_nouns("A man sailing a boat.")
    assert "sailing" not in approximate_nouns("The boat is sailing.")
    hyphens = approximate_nouns("A dog-friendly cafe with an air-conditioning.")
    assert "dog-friendly" in hyphens and "air-conditioning" in hyphens and "dog" not in hyphens
    assert approximate_nouns("") == []
    assert approximate_nouns("A man's hat.") == ["A", "man", "hat"]


def test_generative_plurals_capitals_verbs_relations():
    result = counts(ANSWERS[1], **GENERATIVE[1])
    # nouns in the vocabulary: child (children), dog, dog, mouse (mice), man; "watches" is a
    # verb, "Dogs" stays capitalised and matches nothing.
    # truth targets: people, man, woman (-> person), person, dog; hallu: car, vehicle (-> bus),
    # cat, bus. child: no target -> hallucinated; dog: covers dog (twice, one object); mouse:
    # hallucinated; man: related word of person -> covers person.
    assert result == {
        "mentions": 5,
        "hallucinated": 2,
        "covered": 2,
        "truth": 2,
        "marked": 0,
        "hallu": 2,
    }


def test_generative_duplicate_truth_hyphen_hallu_list():
    result = counts(ANSWERS[2], **GENERATIVE[2])
    # nouns: ship, ship, boat, bus (buses), air-conditioning.
    # truth targets: boat (-> ship #0), boat (-> ship #1), forest (-> tree), ship #0, ship #1,
    # tree: every ship and boat mention finds ship #0 first, so ship #1 is never covered.
    # bus and air-conditioning: no truth target; both on the hallu list -> marked and
    # hallucinated.
    assert result == {
        "mentions": 5,
        "hallucinated": 2,
        "covered": 1,
        "truth": 3,
        "marked": 2,
        "hallu": 2,
    }


def test_generative_safe_words_and_hallucination_off_the_list():
    result = counts(ANSWERS[3], **GENERATIVE[3])
    # nouns: woman, bird, watch, sign ("watches" is a verb here). woman and bird are on no list
    # of this image: hallucinated all the same. watch covers watch. sign is a safe word: a
    # mention that is never a hallucination, and it covers nothing, not even the truth "sign".
    assert result == {
        "mentions": 4,
        "hallucinated": 2,
        "covered": 1,
        "truth": 2,
        "marked": 0,
        "hallu": 1,
    }


def test_generative_empty_answer():
    # no mention, no hallucination; its truth and hallu objects still count
    expected = {"mentions": 0, "hallucinated": 0, "covered": 0, "truth": 1, "marked": 0, "hallu": 1}
    assert counts("", **GENERATIVE[4]) == expected


def test_generative_first_target_wins():
    # truth ["man", "person"]: targets person, people (-> man), people, man (-> person), man,
    # person. "person" finds the related word of man first, "man" the one of person: each
    # covers the other object. Two mentions of "person" cover one object only.
    assert counts("A person and a person.", ["man", "person"], [])["covered"] == 1
    assert counts("A person and a man.", ["man", "person"], [])["covered"] == 2


def test_score_all_by_hand(tmp_path, capsys):
    root = make_benchmark(tmp_path / "amber")
    result = amber.score(ANSWERS, root, approximate=True)
    # answers 1-4 (tests above): mentions 5 + 5 + 4 + 0, hallucinated 2 + 2 + 2 + 0,
    # covered 2 + 1 + 1 + 0 of 2 + 3 + 2 + 1 truth objects, marked 0 + 2 + 0 + 0 of
    # 2 + 2 + 1 + 1 hallu objects; only answer 4 has no hallucination.
    assert result["amber_chair"] == round(6 / (14 + 0.001) * 100, 1) == 42.9
    assert result["amber_cover"] == round(4 / (8 + 0.001) * 100, 1) == 50.0
    assert result["amber_hal"] == round(100 - 1 / (4 + 0.001) * 100, 1) == 75.0
    assert result["amber_cog"] == round(2 / (6 + 0.001) * 100, 1) == 33.3
    assert result["amber_accuracy"] == 50.0 and result["amber_f1"] == 66.6
    assert result["amber_generative"] == 4 and result["amber_discriminative"] == 6
    assert result["amber_approximate"] is True
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "approximating" in err[0] and "CHAIR" in err[0]


def test_score_errors(tmp_path):
    root = make_benchmark(tmp_path / "amber")
    with pytest.raises(KeyError, match="9999"):
        amber.score({9999: "Yes"}, root)
    exact_tools = importlib.util.find_spec("nltk") and importlib.util.find_spec("spacy")
    if not exact_tools:
        with pytest.raises(RuntimeError, match="nltk"):
            amber.score({1: "A dog."}, root, approximate=False)
