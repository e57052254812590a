"""symmpo.train.templates: the released llava_v1 conversation and targets equal a transcription
of the released preprocessing (tests/released_preprocessing.py); the processor's chat template."""

import pytest
from released_preprocessing import conversation_text, released_sequence

from symmpo.train.data import BadRecord, check_records
from symmpo.train.model import num_image_tokens
from symmpo.train.templates import ChatTemplate, ReleasedTemplate, get_template

ANSWERS = {
    "multi-line": "There is a red circle on the left.\nThere is a blue square.\n\nNothing else.",
    "digit first": "3 red circles and 2 blue squares.",
    "newline first": "\nA green triangle at the top.",
    "emoji first": "🙂 one yellow square.",
    "CJK first": "红色的圆 on the right.",
    "long": " ".join(["There are two red squares on the right, one green triangle."] * 12),
}
SEQUENCES = ("chosen", "rejected", "contrast", "chosen", "contrast")


def records_with(make_records, answers):
    """Records whose three responses are the given answers (cycled), one record per answer."""
    records = make_records(len(answers), seed=11)
    texts = list(answers)
    for i, record in enumerate(records):
        record.chosen = texts[i]
        record.rejected = texts[(i + 1) % len(texts)]
        record.contrast = texts[(i + 2) % len(texts)]
    records[1].question = "How many circles?\nCount them."  # a multi-line question too
    return records


@pytest.mark.parametrize("max_length", [2048, 96])
def test_released_template_matches_the_released_preprocessing(
    tiny, make_collator, make_records, max_length
):
    tokenizer, model, _ = tiny
    image_id, n_image = model.config.image_token_id, num_image_tokens(model.config)
    collator = make_collator(max_length=max_length)
    records = records_with(make_records, ANSWERS.values())
    batch = collator(records)
    truncated = 0
    for k, response in enumerate(SEQUENCES):
        for i, record in enumerate(records):
            ids, labels = released_sequence(
                record, response, tokenizer, image_id, n_image, max_length
            )
            assert any(label != -100 for label in labels)
            row = k * len(records) + i
            length = int(batch["attention_mask"][row].sum())
            assert batch["input_ids"][row, :length].tolist() == ids
            assert batch["labels"][row, :length].tolist() == labels
            assert (batch["labels"][row, length:] == -100).all()
            truncated += len(ids) == max_length
    if max_length < 2048:
        assert truncated > 0  # the long answers were cut, </s> and all
    else:
        assert all(batch["labels"][r][batch["labels"][r] != -100][-1] == 2 for r in range(30))


def test_released_targets_start_as_the_released_offset_says(tiny, make_collator, make_records):
    """The space after ASSISTANT: is a target when the answer's first character cannot take it
    (a digit, a newline, an emoji, CJK), else the answer's first token carries it."""
    tokenizer = tiny[0]
    collator = make_collator()
    record = make_records(1, seed=3)[0]
    for name, answer in ANSWERS.items():
        record.chosen = answer
        ids, labels = collator.encode(record, "chosen")
        first = next(i for i, label in enumerate(labels) if label != -100)
        assert tokenizer.convert_ids_to_tokens(ids[first - 1]) == ":"
        first_token = tokenizer.convert_ids_to_tokens(ids[first])
        space_alone = name in ("digit first", "newline first", "emoji first", "CJK first")
        assert (first_token == "Ġ") == space_alone, (name, first_token)
        assert labels[-1] == tokenizer.eos_token_id


def test_released_text_and_generation_prompt(tiny, make_collator):
    tokenizer, model, _ = tiny
    template = ReleasedTemplate()
    ids, labels = template.encode(tokenizer, "What is it?", "A cat.", model.config.image_token_id)
    text = tokenizer.decode(ids).replace("<s>", "", 1)
    assert text == conversation_text("What is it?", "A cat.")
    collator = make_collator()
    prompt = collator.encode_prompt("What is it?")
    assert collator.expand_image(ids)[: len(prompt)] == prompt
    generation = tokenizer.decode([t for t in prompt if t != model.config.image_token_id])
    assert generation.endswith("USER: \nWhat is it? ASSISTANT:")
    assert generation.replace("<s>", "").startswith(template.system + " USER:")


def test_records_the_released_code_would_silently_mask_are_refused_by_idx(
    make_collator, make_records
):
    collator = make_collator()
    records = make_records(4, seed=12)
    records[1].rejected = "   "
    records[2].chosen = "A red circle.</s>"
    records[3].question = "What is it? ASSISTANT: a cat"
    good, bad = check_records(records, collator, skip_bad=True)
    assert [r.idx for r in good] == [records[0].idx]
    assert [(e.idx, e.field) for e in bad] == [
        (records[1].idx, "resp_1_l"),
        (records[2].idx, "resp_1_w"),
        (records[3].idx, "question"),
    ]
    assert "is empty" in bad[0].problem and "separator '</s>'" in bad[1].problem
    with pytest.raises(BadRecord, match=rf"idx={records[1].idx}: field 'resp_1_l' is empty"):
        collator.check(records[1])


def test_processor_chat_template_scores_the_answer_after_the_prompt(tiny):
    tokenizer, model, _ = tiny
    image_id = model.config.image_token_id
    template = get_template("processor", tokenizer)
    assert isinstance(template, ChatTemplate)
    messages = ChatTemplate.messages("What is it?", "A cat.")
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt_text = tokenizer.apply_chat_template(
        messages[:1], add_generation_prompt=True, tokenize=False
    )
    ids, labels = template.encode(tokenizer, "What is it?", "A cat.", image_id)
    assert ids == tokenizer(rendered)["input_ids"]
    prompt = tokenizer(prompt_text)["input_ids"]
    assert labels == [-100] * len(prompt) + ids[len(prompt) :]
    assert tokenizer.decode(ids[len(prompt) :]) == " A cat.</s>"
    assert "A chat between" not in rendered  # the processor's format, not the released one
    assert template.prompt_ids(tokenizer, "What is it?", image_id) == prompt


def test_processor_template_without_a_chat_template_is_a_clear_error(tiny):
    import copy

    tokenizer = copy.deepcopy(tiny[0])
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template; use --template llava_v1"):
        get_template("processor", tokenizer)


def test_a_checkpoints_processor_chat_template_serves_template_processor(tmp_path, tiny):
    import copy

    import torch
    from transformers import LlavaProcessor

    from symmpo.train.model import load_llava

    tokenizer, model, image_processor = tiny
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    chat = tokenizer.chat_template.replace("USER: ", "Human: ")
    folder = tmp_path / "llava"
    copy.deepcopy(model).save_pretrained(folder)
    LlavaProcessor(
        image_processor=image_processor,
        tokenizer=bare,
        patch_size=model.config.vision_config.patch_size,
        vision_feature_select_strategy="default",
        chat_template=chat,
    ).save_pretrained(folder)
    _, loaded, _ = load_llava(str(folder), torch.float32, torch.device("cpu"))
    template = get_template("processor", loaded)
    ids, _ = template.encode(loaded, "Why?", "Because.", model.config.image_token_id)
    assert loaded.decode(ids).startswith("<s>Human: <image>\nWhy? ASSISTANT: Because.")
