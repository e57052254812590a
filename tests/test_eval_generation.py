"""symmpo.eval.generation: greedy answers of an untrained tiny LLaVA decode to readable text."""

import copy

import pytest

from symmpo.eval.generation import generate_answers


@pytest.fixture(scope="module")
def untrained(tiny, make_collator, make_records):
    model = copy.deepcopy(tiny[1])  # .eval() below: the shared model stays as built
    return model.eval(), make_collator(), make_records(3, seed=1)


def test_untrained_answers_have_no_replacement_characters(untrained):
    """The random model emits lone byte tokens (the first evaluation's example answer used to
    be a row of U+FFFD): they come out as <0xNN>, the other tokens as text."""
    model, collator, records = untrained
    answers = generate_answers(
        model, collator, [r.question for r in records], [r.load_image() for r in records]
    )
    assert len(answers) == 3 and all(answers)
    assert all("\ufffd" not in a for a in answers), answers
    assert any("<0x" in a for a in answers), answers  # stray bytes there, and escaped
    assert all(a == a.strip() for a in answers)


def test_answers_are_greedy_and_follow_max_new_tokens(untrained):
    model, collator, records = untrained
    args = ([r.question for r in records[:1]], [r.load_image() for r in records[:1]])
    first = generate_answers(model, collator, *args, max_new_tokens=8)
    assert generate_answers(model, collator, *args, max_new_tokens=8) == first
    longer = generate_answers(model, collator, *args, max_new_tokens=16)[0]
    assert len(longer) >= len(first[0])
