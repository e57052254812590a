"""symmpo.integrations.trl: SymMPOTrainer (TRL's DPOTrainer with symmpo's loss) on the tiny
LLaVA, on the CPU: its loss on a batch is train.py's step on that batch with the same
reference, its reference is train.py's (the initial model's pass, or the data's logps column),
and it trains SymMPO, DPO and mDPO (docs/trl.md)."""

import copy

import pytest
import torch

pytest.importorskip(
    "trl", minversion="1.16", reason="symmpo.integrations.trl needs TRL >= 1.16 (the trl extra)"
)

from datasets import Dataset, Image  # noqa: E402

from symmpo.integrations.trl import SymMPOTrainer, SymMPOTrainerConfig  # noqa: E402
from symmpo.train.build import loss_config  # noqa: E402
from symmpo.train.flags import build_parser  # noqa: E402
from symmpo.train.forwards import FORWARDS  # noqa: E402
from symmpo.train.objectives import PolicyStep, compute_loss  # noqa: E402
from symmpo.train.references import RecordLogps, Scorer  # noqa: E402
from symmpo.train.synthetic import make_synthetic_records  # noqa: E402

#: Non-default loss options, as train.py's flags and as the config's fields.
LOSS_OPTIONS = {
    "beta": 0.2,
    "beta_contrast": 0.3,
    "pair_weight": 0.7,
    "margin_weight": 1e-3,
    "anchor_weight": 0.9,
    "delta": 0.1,
}


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch):
    monkeypatch.setenv("CI", "1")  # TRL's trainers skip their usage ping under CI


def make_config(tmp_path, **overrides) -> SymMPOTrainerConfig:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        learning_rate=1e-3,
        max_steps=3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
    )
    # transformers 5.2x renamed it; TRL's default (on) is set under the old name
    fields = SymMPOTrainerConfig.__dataclass_fields__
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in fields else None
    settings[checkpointing or "gradient_checkpointing"] = False
    return SymMPOTrainerConfig(**{**settings, **overrides})


def test_loss_on_a_batch_is_train_py_step(tmp_path, make_tiny, make_collator, make_records):
    tokenizer, model, processor = make_tiny()
    collator = make_collator(tiny=(tokenizer, model, processor))
    records = make_records(4)
    initial = copy.deepcopy(model)
    config = make_config(tmp_path, **LOSS_OPTIONS)
    trainer = SymMPOTrainer(model, args=config, data_collator=collator, train_dataset=records)

    flags = [f"--{name}={value}" for name, value in LOSS_OPTIONS.items()]
    run = build_parser().parse_args(flags)
    assert trainer.symmpo_config == loss_config(run)
    batch = collator(records[1:3])
    # train.py's precomputed reference: the initial model's pass, as its Scorer scores it
    scorer = Scorer(FORWARDS["naive"], False, False, torch.device("cpu"), False)
    ref = scorer(initial, batch)
    torch.testing.assert_close(trainer.reference_logps(batch), ref, rtol=0, atol=1e-5)
    assert list((tmp_path / "out" / "ref_cache").glob("ref_logps-*.jsonl"))

    calls = []  # the step runs inside the model's forward, where DDP synchronises gradients
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        ours = trainer.compute_loss(trainer.model, batch)
        assert calls == [1]
        step = PolicyStep(model, run.loss, loss_config(run))(batch, trainer.reference_logps(batch))
    assert ours.item() == pytest.approx(step.loss.item(), abs=1e-6)
    logged = trainer._metrics["train"]
    assert set(logged) >= {"symmpo/dpo", "symmpo/pair", "symmpo/accuracy_dpo"}


def test_logps_column_of_a_dataset_is_the_reference(tmp_path, make_tiny, make_collator):
    tokenizer, model, processor = make_tiny()
    collator = make_collator(tiny=(tokenizer, model, processor))
    rows = make_synthetic_records(4)
    for i, row in enumerate(rows):
        row["logps"] = [-10.0 - i - k for k in range(5)]
    data = Dataset.from_list(rows).cast_column("image_1", Image()).cast_column("image_2", Image())
    trainer = SymMPOTrainer(
        model, args=make_config(tmp_path), data_collator=collator, train_dataset=data
    )
    batch = collator(trainer.records[:3])
    torch.testing.assert_close(trainer.reference_logps(batch), RecordLogps()(batch))
    assert not (tmp_path / "out" / "ref_cache").exists()  # no reference pass


def test_three_steps_train_and_evaluate(tmp_path, make_tiny, make_collator, make_records):
    tokenizer, model, processor = make_tiny()
    collator = make_collator(tiny=(tokenizer, model, processor))
    records = make_records(8)
    trainer = SymMPOTrainer(
        model,
        args=make_config(tmp_path),
        data_collator=collator,
        train_dataset=records[:6],
        eval_dataset=records[6:],
    )
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 3
    unchanged = {name for name, p in model.named_parameters() if torch.equal(p, before[name])}
    # full fine-tuning: all but the vision tower's last norm, whose output LLaVA does not use
    assert unchanged == {f"model.vision_tower.post_layernorm.{w}" for w in ("weight", "bias")}
    steps = [row for row in trainer.state.log_history if "loss" in row]
    assert len(steps) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    assert {"symmpo/accuracy_dpo", "symmpo/anchor", "grad_norm"} <= set(steps[0])
    result = trainer.evaluate()
    assert torch.isfinite(torch.tensor(result["eval_loss"]))
    assert "eval_symmpo/accuracy_pair2" in result


@pytest.mark.parametrize("loss,kinds", [("dpo", 2), ("mdpo", 3)])
def test_baselines_train(tmp_path, make_tiny, make_collator, make_records, loss, kinds):
    tokenizer, model, processor = make_tiny()
    collator = make_collator(loss, tiny=(tokenizer, model, processor))
    records = make_records(2)
    config = make_config(tmp_path, loss=loss, max_steps=1)
    trainer = SymMPOTrainer(model, args=config, data_collator=collator, train_dataset=records)
    batch = collator(records[:2])
    ref = trainer.reference_logps(batch)
    assert ref.shape == (2 * kinds,)
    with torch.no_grad():
        ours = trainer.compute_loss(trainer.model, batch)
        plain = compute_loss(model, batch, ref, loss, config.loss_config())
    assert ours.item() == pytest.approx(plain.loss.item(), abs=1e-6)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_refusals(tmp_path, tiny, make_collator, make_records):
    with pytest.raises(ValueError, match="loss must be one of"):
        make_config(tmp_path, loss="ipo")
    with pytest.raises(ValueError, match="loss_type"):
        make_config(tmp_path, loss_type="ipo")
    with pytest.raises(ValueError, match="precompute_ref_log_probs"):
        make_config(tmp_path, precompute_ref_log_probs=False)
    with pytest.raises(ValueError, match="pair_weight"):
        make_config(tmp_path, pair_weight=-1.0)
    model = copy.deepcopy(tiny[1])
    config = make_config(tmp_path, loss="dpo")
    with pytest.raises(ValueError, match="objective='dpo'"):
        SymMPOTrainer(model, args=config, data_collator=make_collator(), train_dataset=[])
    with pytest.raises(ValueError, match="processing_class"):
        SymMPOTrainer(model, args=config, train_dataset=make_records(2))
    with pytest.raises(ValueError, match="is empty"):
        SymMPOTrainer(model, args=config, data_collator=make_collator("dpo"), train_dataset=[])


def test_docs_recipe_processor_rows_and_lora(tmp_path, make_tiny):
    """docs/trl.md's run on the tiny model: the collator built from a LLaVA processor, rows of
    the released layout, LoRA through peft_config (the reference: the adapters disabled)."""
    from peft import LoraConfig
    from transformers import LlavaProcessor

    from symmpo.train.model import LORA_TARGETS

    tokenizer, model, image_processor = make_tiny()
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=model.config.vision_config.patch_size,
        vision_feature_select_strategy="default",
    )
    rows = Dataset.from_list(make_synthetic_records(2))
    initial = copy.deepcopy(model)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS)
    config = make_config(tmp_path, max_steps=1)
    trainer = SymMPOTrainer(
        model, args=config, train_dataset=rows, processing_class=processor, peft_config=lora
    )
    assert trainer.symmpo_collator.template.name == "llava_v1"
    assert trainer.symmpo_collator.max_length == 2048
    batch = trainer.symmpo_collator(trainer.records[:2])
    scorer = Scorer(FORWARDS["naive"], False, False, torch.device("cpu"), False)
    torch.testing.assert_close(trainer.reference_logps(batch), scorer(initial, batch))
    adapters = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    named = dict(trainer.model.named_parameters())
    assert adapters and all(not torch.equal(named[n], p) for n, p in adapters.items())
