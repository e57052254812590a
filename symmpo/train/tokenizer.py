"""A small byte-level BPE tokenizer, trained at start-up on a fixed corpus: no hub access.

The corpus is the synthetic data set's vocabulary (``symmpo.train.synthetic``) laid out the way
the collator tokenizes it (LLaVA-1.5's ``USER: <image>\\n{question} ASSISTANT: {answer}``), plus
any ``extra_corpus``. The byte-level alphabet is always in the vocabulary, so any UTF-8 text
encodes without unknown tokens and decodes back unchanged. The five special tokens take ids 0..4
and are never split. No BOS/EOS is added automatically: ``tok("abc")["input_ids"]`` holds only
the text's tokens (the collator adds BOS and EOS itself).
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
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

#: Special tokens by role; their ids are 0..4 in this order.
SPECIAL_TOKENS = {"unk": "<unk>", "bos": "<s>", "eos": "</s>", "pad": "<pad>", "image": "<image>"}

#: LLaVA-1.5's prompt around the image token, as the collator writes it.
USER_PREFIX = "USER: "
ASSISTANT_TAG = "ASSISTANT:"
#: Random scene descriptions in the built-in corpus (besides every single-group phrase).
CORPUS_SCENES = 300
CORPUS_SEED = "symmpo-tokenizer-corpus"


def builtin_corpus() -> list[str]:
    """The fixed training texts, split where the special ``<image>`` token would sit.

    Texts are the pieces the tokenizer actually sees: ``"USER: "`` before the image token,
    ``"\\n{question} ASSISTANT:"`` after it, and answers with the leading space the collator puts
    before them. Every group phrase (all counts, colours, shapes and positions) appears, plus
    correct and hallucinated descriptions of deterministic random scenes.
    """
    corpus = [USER_PREFIX, "USER:", ASSISTANT_TAG, "\n"]
    corpus += [f"\n{question} {ASSISTANT_TAG}" for question in QUESTIONS]
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
    """The transformers tokenizer: BOS/EOS/UNK/PAD set, and ``<image>`` as the image token.

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
    )
