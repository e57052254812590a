"""At home in the Hugging Face stack: checkpoints load with from_pretrained (and peft), the merged
LoRA model too, metrics reach tensorboard, and a YAML --config file holds flags."""

import json
import pathlib

import pytest
import torch
from train_script import load_train_script

from symmpo.train.build import rebuild_run
from symmpo.train.cli import UsageError, parse_args
from symmpo.train.forwards import score_batch

TINY_RUN = ["--n_train", "16", "--heldout", "4", "--batch_size", "4", "--eval_generate", "0"]


def logps(model, collator, records) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return score_batch(model, collator(records), average=False)


def test_lora_checkpoint_and_merged_model_load_with_from_pretrained(tmp_path, capsys):
    """A LoRA run after a short supervised stage: its adapters name the supervised model (saved
    in the Hugging Face format) as their base, and base + adapters score as the run's model."""
    from peft import PeftModel
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    out = tmp_path / "run"
    flags = [*TINY_RUN, "--max_steps", "2", "--lora", "--lora_r", "4", "--lr", "0.01"]
    train = load_train_script(supervised_stage=True)
    train.main([*flags, "--sft_steps", "3", "--merge_lora", "--output_dir", str(out)])
    capsys.readouterr()
    run = rebuild_run(out / "checkpoint-2")  # the trained model, read back from weights.pt
    assert capsys.readouterr().out == ""  # its messages go to stderr: evaluate's stdout is JSON
    records = run.heldout[:3]
    expected = logps(run.model, run.collator, records)

    hf = out / "checkpoint-2" / "hf"
    assert (hf / "adapter_config.json").is_file() and (hf / "adapter_model.safetensors").is_file()
    base_folder = json.loads((hf / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert pathlib.Path(base_folder).parent == out.resolve()  # the supervised model, sft-<key>/
    base = LlavaForConditionalGeneration.from_pretrained(base_folder)
    supervised = logps(base, run.collator, records)
    adapted = PeftModel.from_pretrained(base, hf)
    torch.testing.assert_close(logps(adapted, run.collator, records), expected)
    assert not torch.allclose(supervised, expected)  # the preference stage trained

    merged = LlavaForConditionalGeneration.from_pretrained(out / "merged")
    torch.testing.assert_close(logps(merged, run.collator, records), expected, rtol=1e-4, atol=1e-3)
    processor = AutoProcessor.from_pretrained(hf)
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == base.config.image_token_id


def test_full_fine_tuning_checkpoint_is_a_plain_llava_folder(tmp_path):
    from transformers import LlavaForConditionalGeneration

    out = tmp_path / "run"
    load_train_script().main([*TINY_RUN, "--max_steps", "1", "--output_dir", str(out)])
    run = rebuild_run(out / "checkpoint-1")
    records = run.heldout[:2]
    loaded = LlavaForConditionalGeneration.from_pretrained(out / "checkpoint-1" / "hf")
    torch.testing.assert_close(
        logps(loaded, run.collator, records), logps(run.model, run.collator, records)
    )
    with pytest.raises(UsageError, match="--merge_lora merges LoRA adapters"):
        from symmpo.train.cli import check_combinations

        check_combinations(parse_args(["--merge_lora", "--output_dir", str(tmp_path / "x")]))


def test_metrics_reach_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    flags = [*TINY_RUN, "--max_steps", "2", "--logging_steps", "1", "--report_to", "tensorboard"]
    result = load_train_script().main([*flags, "--output_dir", str(out)])
    events = list(out.rglob("events.out.tfevents.*"))
    assert events
    scalars = EventAccumulator(str(events[0].parent)).Reload()
    losses = scalars.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2]
    assert losses[1].value == pytest.approx(result["history"][1]["loss"], rel=1e-6)
    assert [e.step for e in scalars.Scalars("eval/logp_accuracy")] == [0, 2]


def test_a_config_file_holds_flags_and_the_command_line_wins(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("lora: true\nlora_r: 8\nmax_steps: 7\nlr: 0.002\nloss: dpo\n")
    args = parse_args(["--config", str(config), "--max_steps", "3", "--output_dir", "o"])
    assert (args.lora, args.lora_r, args.max_steps, args.lr, args.loss) == (
        True,
        8,
        3,
        0.002,
        "dpo",
    )
    config.write_text("lerning_rate: 0.1\n")
    with pytest.raises(UsageError, match="'lerning_rate' is not a flag of train.py"):
        parse_args(["--config", str(config)])
    config.write_text("lr: [1, 2]\n")
    with pytest.raises(UsageError, match="lr: expected one value"):
        parse_args(["--config", str(config)])
    config.write_text("max_steps: -1\n")  # a bad value: the flag's own one-line error
    with pytest.raises(SystemExit):
        parse_args(["--config", str(config)])
    assert "argument --max_steps: got -1" in capsys.readouterr().err


def test_workers_collate_the_same_batches_in_the_same_order(tmp_path, make_collator, make_records):
    from types import SimpleNamespace

    from symmpo.train.batches import MicroBatches, micro_batch_loader

    records = make_records(12, seed=4)
    args = SimpleNamespace(batch_size=2, grad_accum=2, seed=3, max_steps=3)
    micro = MicroBatches(records, make_collator(), args, 4, 1, 0, start_step=1)
    seen = {workers: [b["idx"] for b in micro_batch_loader(micro, workers)] for workers in (0, 2)}
    assert seen[0] == seen[2] and len(seen[0]) == 4  # steps 1 and 2, two micro-batches each
    from symmpo.train.data import batch_records

    step_1 = [r.idx for r in batch_records(records, 1, 4, 3)]
    assert seen[0][0] + seen[0][1] == step_1  # micro-batch 0 then 1 of step 1, as train.py used


def test_data_from_datasets_local_files_and_hub_ids(tmp_path, monkeypatch):
    from symmpo.train.data_source import is_hub_id, read_rows
    from symmpo.train.synthetic import make_synthetic_records

    rows = make_synthetic_records(3, seed=8)
    lines = []
    for row in rows:
        for k in (1, 2):
            (tmp_path / f"{row['idx']}_{k}.png").write_bytes(row[f"image_{k}"]["bytes"])
            row[f"image_{k}"] = f"{row['idx']}_{k}.png"
        lines.append(json.dumps({k: v for k, v in row.items() if not k.startswith("scene")}))
    (tmp_path / "data.jsonl").write_text("\n".join(lines))
    read, base = read_rows(str(tmp_path / "data.jsonl"))
    assert [r["idx"] for r in read] == [r["idx"] for r in rows] and base == tmp_path
    assert read[1]["resp_1_w"] == rows[1]["resp_1_w"]

    assert is_hub_id("owner/SymMPO-Dataset") and not is_hub_id(str(tmp_path / "data.jsonl"))
    assert not is_hub_id("owner/data.parquet")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    with pytest.raises(FileNotFoundError, match="--data nobody/nothing-here: not a local file"):
        read_rows("nobody/nothing-here")
