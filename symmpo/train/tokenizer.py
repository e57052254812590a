"""A small byte-level BPE tokenizer, trained at start-up on a fixed corpus: no hub access.

The corpus is the synthetic data set's vocabulary (``symmpo.train.synthetic``) laid out the way
the templates tokenize it (``symmpo.train.templates``: the released ``llava_v1`` conversation,
split at the image token, and the chat template below), plus any ``extra_corpus``. The
byte-level alphabet is always in the vocabulary, so any UTF-8 text encodes without unknown
tokens and decodes back unchanged. The five special tokens take ids 0..4 and are never split.
Like Llama's tokenizer it adds BOS (not EOS) to every text unless ``add_special_tokens=False``.

Its chat template (for ``--template processor``) is LLaVA-1.5's format without the system
sentence, as the converted Hugging Face LLaVA-1.5 checkpoints write it:
``USER: <image>\\n{question} ASSISTANT: {answer}</s>``.

``readable_decode`` decodes a model's output for people (evaluation answers): a byte-level
tokenizer's ``decode`` turns every byte that is not part of valid UTF-8 into U+FFFD, and an
untrained model emits such bytes constantly.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from .synthetic import (
    COLOUR_NAMES,
    COUNT_WORDS,
    POSITIONS,
    QUESTIONS,
    SHAPES,
    describe_scene,
    hallucinated_scene,
    make_group,
    sample_scene,
)
from .templates import SYSTEM

#: Special tokens by role; their ids are 0..4 in this order.
SPECIAL_TOKENS = {"unk": "<unk>", "bos": "<s>", "eos": "</s>", "pad": "<pad>", "image": "<image>"}

#: The chat template of ``--template processor``: user turns hold an image item and a text item.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: "
    "{% for item in message['content'] %}{{ item['text'] }}{% endfor %}{{ eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
#: Random scene descriptions in the built-in corpus (besides every single-group phrase).
CORPUS_SCENES = 300
CORPUS_SEED = "symmpo-tokenizer-corpus"


def builtin_corpus() -> list[str]:
    """The fixed training texts, split where the special ``<image>`` token would sit.

    Texts are the pieces the tokenizer actually sees: the system sentence and ``" USER: "``
    before the image token (weighted as one per question: it opens every sequence),
    ``"\\n{question} ASSISTANT:"`` after it, and answers with their leading space. Every group
    phrase (all counts, colours, shapes and positions) appears, plus correct and hallucinated
    descriptions of deterministic random scenes.
    """
    corpus = [f"{SYSTEM} USER: "] * 50 + ["USER: ", "ASSISTANT:", "\n"]
    corpus += [f"\n{question} ASSISTANT:" for question in QUESTIONS]
    corpus += [
        " " + describe_scene([make_group(shape, colour, count, position)])
        for count in COUNT_WORDS
        for colour in COLOUR_NAMES
        for shape in SHAPES
        for position in POSITIONS
    ]
    rng = random.Random(CORPUS_SEED)
    for _ in range(CORPUS_SCENES):
        scene = sample_scene(rng)
        corpus.append(" " + describe_scene(scene))
        corpus.append(" " + describe_scene(hallucinated_scene(scene, rng)))
    return corpus


def build_backend_tokenizer(vocab_size: int = 512, extra_corpus: Iterable[str] = ()) -> Tokenizer:
    """The trained ``tokenizers.Tokenizer`` (no transformers wrapper).

    ``vocab_size`` is an upper bound: it counts the 5 special tokens and the 256 byte symbols,
    and training stops early once the corpus has no pair left to merge.
    """
    n_fixed = len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < n_fixed:
        raise ValueError(f"vocab_size must be at least {n_fixed}, got {vocab_size}")
    backend = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk"]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    bos = SPECIAL_TOKENS["bos"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, 1)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),  # ids 0..4, added as special tokens
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([*builtin_corpus(), *extra_corpus], trainer=trainer)
    return backend


def build_tokenizer(
    vocab_size: int = 512, extra_corpus: Iterable[str] = ()
) -> PreTrainedTokenizerFast:
    """The transformers tokenizer: BOS/EOS/UNK/PAD set, ``<image>`` as the image token, and
    the chat template of ``--template processor``.

    ``<image>`` is registered through transformers 5's named extra special tokens, so besides
    ``convert_tokens_to_ids("<image>")`` the tokenizer has ``image_token``/``image_token_id``
    (which LLaVA processors read) and keeps them through ``save_pretrained``.
    """
    return PreTrainedTokenizerFast(
        tokenizer_object=build_backend_tokenizer(vocab_size, extra_corpus),
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        pad_token=SPECIAL_TOKENS["pad"],
        extra_special_tokens={"image_token": SPECIAL_TOKENS["image"]},
        chat_template=CHAT_TEMPLATE,
    )


# -- decoding model output ----------------------------------------------------------------------


def byte_level_alphabet() -> dict[str, int]:
    """The byte-level (GPT-2) character of each byte -> that byte: printable Latin-1 bytes stand
    for themselves, the other 68 are shifted to U+0100 and up (space is 'Ġ', newline 'Ċ')."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    shifted = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + i): b for i, b in enumerate(shifted)})
    return table


_BYTE_OF_CHAR = byte_level_alphabet()


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and isinstance(backend.decoder, decoders.ByteLevel)


def escape_invalid_utf8(data: bytes) -> str:
    """``data`` as UTF-8, each byte that is not part of a valid UTF-8 character written as
    ``<0xNN>`` (the byte-fallback token notation of Llama-family tokenizers)."""
    pieces = []
    while True:
        try:
            pieces.append(data.decode("utf-8"))
            return "".join(pieces)
        except UnicodeDecodeError as error:
            pieces.append(data[: error.start].decode("utf-8"))
            pieces.extend(f"<0x{b:02X}>" for b in data[error.start : error.end])
            data = data[error.end :]


def readable_decode(tokenizer, ids: Sequence[int]) -> str:
    """The text of generated token ids, special tokens skipped, without U+FFFD rows.

    A byte-level BPE token is a run of bytes, not of characters: a character outside ASCII spans
    several tokens, and a token can hold a lone lead or continuation byte. ``tokenizer.decode``
    joins the bytes of all tokens and decodes them with replacement, so text a trained model
    writes comes out whole, but the random tokens of an untrained (or diverging) model, which
    are mostly such partial bytes, each become U+FFFD: the first evaluation's example answer
    was a row of them.

    Here the same bytes are decoded whole (characters split across tokens still join), and each
    byte that is not part of a valid UTF-8 character is written ``<0xNN>``. Escaping rather than
    dropping: the answer still shows that, and which, stray bytes the model produced (dropping
    would glue the surrounding words together and hide it), the text stays printable ASCII where
    the model's is, and the delimited form never merges with a neighbouring word when answers are
    matched against object words. Valid text, U+FFFD included, decodes exactly as ``decode``.

    Tokenizers that are not byte-level (sentencepiece with byte fallback, for instance) go
    through ``tokenizer.decode``; the bytes behind its U+FFFD are not recoverable there, so those
    characters are dropped.
    """
    ids = [int(i) for i in ids]
    if not _is_byte_level(tokenizer):
        return tokenizer.decode(ids, skip_special_tokens=True).replace("\ufffd", "")
    data = bytearray()
    for token in tokenizer.convert_ids_to_tokens(ids, skip_special_tokens=True):
        if all(c in _BYTE_OF_CHAR for c in token):
            data.extend(_BYTE_OF_CHAR[c] for c in token)
        else:  # an added (non-byte-level) token: its text, as the ByteLevel decoder does
            data.extend(token.encode("utf-8"))
    return escape_invalid_utf8(bytes(data))
