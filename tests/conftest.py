"""Test setup: Triton's interpreter must be switched on before any @triton.jit is defined.

Shared fixtures: the tiny LLaVA of seed 0 (``tiny``, built once), a factory for fresh ones
(``make_tiny``), a collator factory (``make_collator``), synthetic records (``make_records``)
and the tiny model saved as a checkpoint folder (``tiny_checkpoint``). Tests marked ``cuda``
are skipped unless a CUDA device runs compiled (not interpreted) Triton.
"""

import copy
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return
    skip = pytest.mark.skip(reason="needs a CUDA device and compiled (not interpreted) Triton")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def make_tiny():
    """make_tiny(seed=0) -> a fresh (tokenizer, model, image processor): the tiny LLaVA for a
    test that trains, casts, moves, patches or otherwise changes its model, or needs a seed
    other than 0."""
    from symmpo.train.model import tiny_llava
    from symmpo.train.tokenizer import build_tokenizer

    def make(seed: int = 0):
        tokenizer = build_tokenizer()
        model, processor = tiny_llava(tokenizer, seed=seed)
        return tokenizer, model, processor

    return make


@pytest.fixture(scope="session")
def tiny(make_tiny):
    """(tokenizer, model, image processor): the tiny LLaVA of seed 0, built once and shared by
    the whole session, so read-only: a test that changes the model (training steps, backward,
    .eval(), dtype or device moves, patches) takes ``copy.deepcopy(tiny[1])`` or
    ``make_tiny(seed)`` instead."""
    return make_tiny(0)


@pytest.fixture(scope="session")
def make_collator(tiny):
    """make_collator(loss="symmpo", max_length=2048, tiny=None) -> a PreferenceCollator for the
    tiny model (``tiny``: another (tokenizer, model, processor) triple, the shared one if None)."""
    from symmpo.train.collator import PreferenceCollator
    from symmpo.train.model import num_image_tokens

    shared = tiny

    def make(loss="symmpo", max_length=2048, tiny=None):
        tokenizer, model, processor = tiny or shared
        return PreferenceCollator(
            tokenizer,
            processor,
            model.config.image_token_id,
            num_image_tokens(model.config),
            max_length=max_length,
            objective=loss,
        )

    return make


@pytest.fixture(scope="session")
def make_records():
    """make_records(n=3, seed=0) -> n synthetic PreferenceRecords."""
    from symmpo.train.data import records_from_rows
    from symmpo.train.synthetic import make_synthetic_records

    def make(n=3, seed=0):
        return records_from_rows(make_synthetic_records(n, seed=seed))[0]

    return make


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny):
    """The shared tiny model and its processor saved as a LLaVA checkpoint folder (a copy is
    saved: save_pretrained writes into the model's config)."""
    from transformers import LlavaProcessor

    tokenizer, model, image_processor = tiny
    folder = tmp_path / "llava-tiny"
    copy.deepcopy(model).save_pretrained(folder)
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=model.config.vision_config.patch_size,
        vision_feature_select_strategy="default",
    )
    processor.save_pretrained(folder)
    return folder
