"""symmpo.train.sft: the supervised stage trains the language model only, on the captions'
answer tokens, and its weights are cached under a fingerprint of what they depend on."""

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from symmpo.train import sft
from symmpo.train.sft import (
    caption_batch,
    caption_loss,
    supervised_model,
    swap_accuracy,
    train_supervised,
)


def _args(steps=2, lr=1e-3, seed=0):
    return SimpleNamespace(sft_steps=steps, sft_lr=lr, seed=seed)


def test_caption_batch_scores_only_the_answer(make_collator, make_records):
    collator = make_collator()
    records = make_records(2)
    batch = caption_batch(collator, [(r, "chosen", "image") for r in records])
    for row, record in enumerate(records):
        ids, labels = collator.encode(record, "chosen")
        assert batch["labels"][row, : len(labels)].tolist() == labels
        assert batch["input_ids"][row, : len(ids)].tolist() == ids
    assert batch["pixel_values"].shape[0] == 2
    assert batch["image_index"].tolist() == [0, 1]


def test_training_freezes_the_vision_side_and_lowers_the_loss(
    make_tiny, make_collator, make_records
):
    tiny = make_tiny()
    model = tiny[1]
    collator = make_collator(tiny=tiny)
    records = make_records(4)
    vision = copy.deepcopy(model.model.vision_tower.state_dict())
    projector = copy.deepcopy(model.model.multi_modal_projector.state_dict())
    items = [(r, "chosen", "image") for r in records]
    with torch.no_grad():
        before = float(caption_loss(model, caption_batch(collator, items)))
    train_supervised(model, collator, records, steps=6, lr=1e-3, log=lambda *a: None)
    with torch.no_grad():
        after = float(caption_loss(model, caption_batch(collator, items)))
    assert after < before
    for name, value in model.model.vision_tower.state_dict().items():
        torch.testing.assert_close(value, vision[name], rtol=0, atol=0)
    for name, value in model.model.multi_modal_projector.state_dict().items():
        torch.testing.assert_close(value, projector[name], rtol=0, atol=0)
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    assert 0.0 <= swap_accuracy(model, collator, records) <= 1.0


def test_second_run_reuses_the_cache_and_a_changed_flag_retrains(
    tmp_path, make_tiny, make_collator, make_records, monkeypatch
):
    records = make_records(4)
    calls = []
    real_train = sft.train_supervised

    def counting_train(*args, **kwargs):
        calls.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(sft, "train_supervised", counting_train)

    pristine = make_tiny()
    collator = make_collator(tiny=pristine)

    def run(args, recs=records):
        model = copy.deepcopy(pristine[1])
        return supervised_model(args, model, collator, recs, tmp_path, {"tiny": 0}, print)

    first, info = run(_args())
    assert calls == [1] and not info["cached"] and info["path"].exists()
    again, info_again = run(_args())
    assert calls == [1] and info_again["cached"] and info_again["path"] == info["path"]
    for (name, a), (_, b) in zip(
        first.state_dict().items(), again.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    for changed in (_args(steps=3), _args(lr=5e-4), _args(seed=1)):
        _, info_changed = run(changed)
        assert not info_changed["cached"] and info_changed["key"] != info["key"]
    assert len(calls) == 4
    _, info_records = run(_args(), make_records(4, seed=1))
    assert not info_records["cached"] and info_records["key"] != info["key"]


def test_zero_steps_skip_the_stage(tmp_path, make_tiny, make_collator, make_records):
    tiny = make_tiny()
    _, info = supervised_model(
        _args(steps=0), tiny[1], make_collator(tiny=tiny), make_records(2), tmp_path
    )
    assert info["path"] is None and not list(tmp_path.iterdir())


@pytest.mark.parametrize("steps", [1])
def test_cache_file_loads_with_weights_only(
    tmp_path, make_tiny, make_collator, make_records, steps
):
    tiny = make_tiny()
    _, info = supervised_model(
        _args(steps=steps), tiny[1], make_collator(tiny=tiny), make_records(2), tmp_path
    )
    saved = torch.load(info["path"], weights_only=True)
    assert set(saved["weights"]) == set(tiny[1].state_dict())
    assert saved["losses"] == info["losses"] and len(saved["losses"]) == steps


def test_the_stage_logs_its_caption_losses_in_metrics_jsonl_even_from_the_cache(tmp_path):
    """Both runs sharing one --sft_cache_dir log the same supervised rows (the second loaded the
    model and its losses from the cache), before the preference stage's rows."""
    from train_script import load_train_script

    flags = "--n_train 16 --heldout 4 --batch_size 4 --max_steps 2 --eval_generate 0".split()
    flags += ["--sft_steps", "5", "--logging_steps", "2", "--sft_cache_dir", str(tmp_path / "c")]
    logged = []
    for name in ("first", "second"):
        load_train_script(supervised_stage=True).main(
            [*flags, "--output_dir", str(tmp_path / name)]
        )
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        logged.append([json.loads(line) for line in lines])
    first, second = logged
    (cache,) = (tmp_path / "c").glob("sft-*.pt")
    losses = torch.load(cache, weights_only=True)["losses"]
    sft_rows = [r for r in first if r.get("stage") == "sft"]
    assert [(r["step"], r["sft_step"]) for r in sft_rows] == [(0, 2), (0, 4), (0, 5)]
    assert [r["caption_loss"] for r in sft_rows] == [losses[1], losses[3], losses[4]]
    assert first[: len(sft_rows)] == sft_rows  # then the preference stage's rows
    assert [r["stage"] for r in first[len(sft_rows) :]] == ["preference"]
    assert [r for r in second if r.get("stage") == "sft"] == sft_rows


def test_evaluation_never_trains_a_missing_stage_and_reads_old_caches(
    tmp_path, make_tiny, make_collator, make_records
):
    """train=False (rebuild_run) raises naming the folder instead of training; a cache written
    before the losses were kept with the weights (a bare state dict) still loads."""
    tiny = make_tiny()
    collator, records = make_collator(tiny=tiny), make_records(2)
    with pytest.raises(FileNotFoundError, match="--sft_cache_dir"):
        supervised_model(_args(steps=1), tiny[1], collator, records, tmp_path, train=False)
    model, info = supervised_model(_args(steps=1), tiny[1], collator, records, tmp_path)
    saved = torch.load(info["path"], weights_only=True)
    torch.save(saved["weights"], info["path"])  # the earlier format
    fresh = make_tiny()[1]
    loaded, again = supervised_model(_args(steps=1), fresh, collator, records, tmp_path)
    assert again["cached"] and again["losses"] == []
    for (name, a), (_, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
