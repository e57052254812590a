"""symmpo.eval.generation: greedy answers of an untrained tiny LLaVA decode to readable text."""

import pytest

from symmpo.eval.generation import generate_answers
from symmpo.train.collator import PreferenceCollator
from symmpo.train.data import records_from_rows
from symmpo.train.model import num_image_tokens, tiny_llava
from symmpo.train.synthetic import make_synthetic_records
from symmpo.train.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def untrained():
    tokenizer = build_tokenizer()
    model, processor = tiny_llava(tokenizer, seed=0)
    collator = PreferenceCollator(
        tokenizer, processor, model.config.image_token_id, num_image_tokens(model.config)
    )
    records = records_from_rows(make_synthetic_records(3, seed=1))[0]
    return model.eval(), collator, records


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
