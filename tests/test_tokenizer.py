"""The start-up byte-level BPE tokenizer: special tokens, UTF-8 round trips, determinism."""

import pytest
from tokenizers import pre_tokenizers

from symmpo.train.tokenizer import (
    SPECIAL_TOKENS,
    build_backend_tokenizer,
    build_tokenizer,
    byte_level_alphabet,
    escape_invalid_utf8,
    readable_decode,
)

ARBITRARY_TEXTS = [
    "héllo wörld 你好 🙂",
    "USER: <image>\nWhat is it? ASSISTANT: a red circle.</s>",
    "\ttabs,  double  spaces and\r\nwindows newlines\n\n",
    "Ünïcödé ∑∫√ 𝔘𝔫𝔦 — «quotes» ‘’ “” … \u200b zero width",
    "日本語のテキストと한국어 텍스트, العربية, עברית",
    "",
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_special_tokens_take_ids_0_to_4_in_order(tok):
    for expected_id, token in enumerate(SPECIAL_TOKENS.values()):
        assert tok.convert_tokens_to_ids(token) == expected_id
        assert tok(token, add_special_tokens=False)["input_ids"] == [expected_id]
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)
    assert tok.image_token == "<image>" and tok.image_token_id == 4
    assert set(SPECIAL_TOKENS.values()) <= set(tok.all_special_tokens)


def test_special_tokens_are_never_split_inside_text(tok):
    ids = tok("USER: <image>\nWhat is it? ASSISTANT:")["input_ids"]
    assert ids.count(tok.image_token_id) == 1
    assert "<image>" in tok.convert_ids_to_tokens(ids)
    ids = tok("x<image>y<s>z</s><pad>w<unk>", add_special_tokens=False)["input_ids"]
    for special_id in range(len(SPECIAL_TOKENS)):
        assert ids.count(special_id) == 1


@pytest.mark.parametrize("text", ARBITRARY_TEXTS)
def test_arbitrary_utf8_round_trips_without_unknowns(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text


def test_bos_and_no_eos_is_added_by_default_as_llama_does(tok):
    ids = tok("abc")["input_ids"]
    assert ids == [tok.bos_token_id, *tok("abc", add_special_tokens=False)["input_ids"]]
    assert tok.eos_token_id not in ids and ids.count(tok.bos_token_id) == 1
    assert tok.decode(ids, skip_special_tokens=True) == "abc"


def test_building_twice_gives_identical_tokenizers():
    first, second = build_tokenizer(), build_tokenizer()
    assert first.get_vocab() == second.get_vocab()
    assert build_backend_tokenizer().to_str() == build_backend_tokenizer().to_str()


def test_synthetic_vocabulary_gets_whole_word_tokens(tok):
    answer = " There are two red circles on the left and one purple triangle at the bottom."
    tokens = tok.tokenize(answer)
    assert tokens[:5] == ["ĠThere", "Ġare", "Ġtwo", "Ġred", "Ġcircles"]
    assert len(tokens) == len(answer.split()) + 1  # one token per word, plus the full stop


def test_extra_corpus_is_learned():
    word = " zyzzyva"
    assert len(build_tokenizer().tokenize(word)) > 1
    assert build_tokenizer(extra_corpus=[word] * 20).tokenize(word) == ["Ġzyzzyva"]


def test_vocab_size_is_an_upper_bound():
    assert len(build_tokenizer(vocab_size=300)) == 300
    assert len(build_tokenizer(vocab_size=512)) <= 512
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer(vocab_size=100)


def test_padding_uses_the_pad_token(tok):
    batch = tok(["a", "abc"], padding=True)
    assert batch["input_ids"][0][-1] == tok.pad_token_id
    assert batch["attention_mask"][0][-1] == 0


# -- readable_decode: generated ids to text without U+FFFD ---------------------------------------


def byte_ids(tok, data: bytes) -> list[int]:
    """The single-byte tokens of ``data``, one per byte (as a random model may emit them)."""
    char = {b: c for c, b in byte_level_alphabet().items()}
    return tok.convert_tokens_to_ids([char[b] for b in data])


def test_byte_level_alphabet_is_the_tokenizers_one():
    table = byte_level_alphabet()
    assert sorted(table.values()) == list(range(256))
    assert set(table) == set(pre_tokenizers.ByteLevel.alphabet())
    assert table["Ġ"] == ord(" ") and table["Ċ"] == ord("\n") and table["a"] == ord("a")


@pytest.mark.parametrize("text", ARBITRARY_TEXTS + ["a \ufffd b"])
def test_readable_decode_matches_decode_on_valid_text(tok, text):
    ids = tok.encode(text)
    assert readable_decode(tok, ids) == tok.decode(ids, skip_special_tokens=True)
    if not any(special in text for special in SPECIAL_TOKENS.values()):
        assert readable_decode(tok, ids) == text


def test_readable_decode_escapes_stray_bytes_instead_of_u_fffd(tok):
    """The cause of the U+FFFD rows: the byte-level decoder replaces every byte that is not part
    of valid UTF-8. Lone continuation bytes, a lead byte without its continuation and a cut
    4-byte character stay visible as <0xNN>; the valid characters around them decode."""
    data = b"ok " + b"\xab\xca" + b" red " + "🙂".encode()[:3] + "é".encode()
    ids = [tok.bos_token_id, *byte_ids(tok, data), tok.eos_token_id]
    assert tok.decode(ids, skip_special_tokens=True) == "ok \ufffd\ufffd red \ufffdé"
    assert readable_decode(tok, ids) == "ok <0xAB><0xCA> red <0xF0><0x9F><0x99>é"


def test_readable_decode_joins_characters_split_across_tokens(tok):
    ids = byte_ids(tok, "你好 🙂".encode())  # every byte its own token
    assert readable_decode(tok, ids) == "你好 🙂"


def test_escape_invalid_utf8():
    assert escape_invalid_utf8(b"") == ""
    assert escape_invalid_utf8(b"\xff") == "<0xFF>"
    assert escape_invalid_utf8(b"a\xc3") == "a<0xC3>"
    assert escape_invalid_utf8(b"\xc3\xa9\x80z") == "é<0x80>z"


def test_readable_decode_of_other_tokenizers_drops_u_fffd():
    class SentencePieceLike:  # no byte-level backend: its decode is all there is
        def decode(self, ids, skip_special_tokens=False):
            assert skip_special_tokens
            return "a\ufffd\ufffd b"

    assert readable_decode(SentencePieceLike(), [5, 6]) == "a b"
