"""The reference trainer's pieces and train.py end to end on the tiny default (CPU, seconds)."""

import io
import json
import shutil

import pytest
import torch
from train_script import load_train_script

from symmpo import SymMPOConfig, symmpo_loss
from symmpo.train.cli import UsageError
from symmpo.train.collator import PreferenceCollator
from symmpo.train.data import BadRecord, records_from_rows
from symmpo.train.model import naive_forward, num_image_tokens, tiny_llava, unwrap
from symmpo.train.objectives import compute_loss
from symmpo.train.synthetic import make_synthetic_records
from symmpo.train.tokenizer import build_tokenizer

SMALL = ["--n_train", "24", "--heldout", "8", "--batch_size", "4", "--eval_batch_size", "8"]


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer()
    model, processor = tiny_llava(tokenizer, seed=0)
    return tokenizer, model, processor


def make_collator(tiny, loss="symmpo", max_length=2048):
    tokenizer, model, processor = tiny
    n_image = num_image_tokens(model.config)
    return PreferenceCollator(
        tokenizer,
        processor,
        model.config.image_token_id,
        n_image,
        max_length=max_length,
        objective=loss,
    )


def records(n=3, seed=0):
    return records_from_rows(make_synthetic_records(n, seed=seed))[0]


def test_collator_sequences_decode_to_their_responses(tiny):
    tokenizer = tiny[0]
    recs = records(3)
    batch = make_collator(tiny)(recs)
    fields = ["chosen", "rejected", "contrast", "chosen", "contrast"]
    assert batch["input_ids"].shape[0] == 15
    for k, field in enumerate(fields):
        for i, record in enumerate(recs):
            row = k * 3 + i
            labels = batch["labels"][row]
            targets = labels[labels != -100].tolist()
            assert targets[-1] == tokenizer.eos_token_id
            assert tokenizer.decode(targets[:-1]).strip() == getattr(record, field)
            first = int((labels != -100).nonzero()[0])
            prompt = tokenizer.decode(batch["input_ids"][row, :first].tolist())
            assert record.question in prompt and prompt.rstrip().endswith("ASSISTANT:")
            assert batch["image_index"][row] == (i if k < 3 else 3 + i)
    assert batch["pixel_values"].shape[0] == 6
    n_image = (batch["input_ids"] == tiny[1].config.image_token_id).sum(-1)
    assert torch.all(n_image == num_image_tokens(tiny[1].config))


def test_vision_tower_sees_2b_images(tiny):
    model = tiny[1]
    seen = []
    hook = unwrap(model).model.vision_tower.register_forward_hook(
        lambda module, args, out: seen.append(args[0].shape[0])
    )
    try:
        naive_forward(model, make_collator(tiny)(records(3)))
    finally:
        hook.remove()
    assert seen == [6]


def test_trainer_loss_equals_symmpo_loss_on_plain_forward_logits(tiny):
    model = tiny[1].float().eval()
    batch = make_collator(tiny)(records(2))
    ref = -torch.rand(10) * 50
    config = SymMPOConfig(beta=0.3, pair_weight=0.7)
    ours = compute_loss(model, batch, ref, "symmpo", config)
    logits = model(
        input_ids=batch["input_ids"],
        pixel_values=batch["pixel_values"][batch["image_index"]],
        attention_mask=batch["attention_mask"],
    ).logits
    plain = symmpo_loss(logits, batch["labels"], ref, config=config)
    assert ours.loss.item() == pytest.approx(plain.loss.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(ours.policy_logps, plain.policy_logps, rtol=1e-5, atol=1e-4)


def test_fixed_batch_overfits():
    tokenizer = build_tokenizer()
    model, processor = tiny_llava(tokenizer, seed=1)
    collator = make_collator((tokenizer, model, processor))
    batch = collator(records(4, seed=3))
    ref = torch.zeros(20)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(25):
        out = compute_loss(model, batch, ref, "symmpo", SymMPOConfig())
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("loss", ["dpo", "mdpo"])
def test_baseline_losses_through_the_collator(tiny, loss):
    batch = make_collator(tiny, loss)(records(2))
    kinds = {"dpo": 2, "mdpo": 3}[loss]
    assert (
        batch["input_ids"].shape[0] == 2 * kinds
        and batch["pixel_values"].shape[0] == 4 - (loss == "dpo") * 2
    )
    out = compute_loss(tiny[1], batch, torch.zeros(2 * kinds), loss, SymMPOConfig())
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_bad_records_name_idx_and_field(tiny):
    collator = make_collator(tiny)
    rows = make_synthetic_records(2)
    missing = dict(rows[0])
    del missing["resp_1_l"]
    with pytest.raises(BadRecord, match=r"idx=0: field 'resp_1_l' is missing"):
        records_from_rows([missing])
    empty = dict(rows[0], resp_2_w="   ")
    with pytest.raises(BadRecord, match=r"idx=0: field 'resp_2_w' is empty"):
        records_from_rows([empty])
    broken = dict(rows[1], image_2={"bytes": b"not a png", "path": None})
    record = records_from_rows([broken])[0][0]
    with pytest.raises(BadRecord, match=r"idx=1: field 'image_2' is not a readable image"):
        collator.check(record)
    short = make_collator(tiny, max_length=10)
    with pytest.raises(BadRecord, match=r"idx=0: field 'resp_1_w' has no target token left"):
        short.check(records(1)[0])
    kept, skipped = records_from_rows([missing, rows[1]], skip_bad=True)
    assert len(kept) == 1 and len(skipped) == 1


def test_train_runs_logs_checkpoints_and_resumes_exactly(tmp_path):
    train = load_train_script()
    full = train.main(
        [
            *SMALL,
            "--output_dir",
            str(tmp_path / "full"),
            "--max_steps",
            "6",
            "--save_steps",
            "3",
            "--logging_steps",
            "1",
        ]
    )
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    required = {
        "step",
        "loss",
        "grad_norm",
        "lr",
        "dpo",
        "pair",
        "margin",
        "anchor",
        "accuracy_dpo",
        "accuracy_pair1",
        "accuracy_pair2",
        "reward_margin_dpo",
        "reward_margin_pair1",
        "reward_margin_pair2",
        "tokens_per_s",
        "peak_mem_mb",
    }
    assert required <= set(rows[0])
    ckpts = sorted(p.name for p in (tmp_path / "full").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-3", "checkpoint-6"]
    assert not list((tmp_path / "full").glob(".tmp-*"))

    # An interrupted run: the same settings, stopped after the checkpoint of step 3.
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part, ignore=shutil.ignore_patterns("checkpoint-6"))
    resumed = train.main(
        [
            *SMALL,
            "--output_dir",
            str(part),
            "--max_steps",
            "6",
            "--save_steps",
            "3",
            "--logging_steps",
            "1",
            "--resume",
        ]
    )
    expected = [r["loss"] for r in full["history"][3:]]
    got = [r["loss"] for r in resumed["history"]]
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert [r["step"] for r in resumed["history"]] == [4, 5, 6]
    logged = [json.loads(line)["step"] for line in (part / "metrics.jsonl").open()]
    assert logged == [1, 2, 3, 4, 5, 6]  # the interrupted run's steps 4-6 are not doubled
    evals = [json.loads(line)["step"] for line in (part / "eval.jsonl").open()]
    assert evals == sorted(set(evals))


def test_released_parquet_layout_trains_two_steps(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = make_synthetic_records(16, seed=5)
    for row in rows:
        row["logps"] = [-10.0, -12.0, -11.0, -11.5, -10.5]
        row.pop("scene_1"), row.pop("scene_2")
    path = tmp_path / "data"
    path.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), path / "train-00000.parquet")
    train = load_train_script()
    result = train.main(
        [
            "--data",
            str(path),
            "--heldout",
            "4",
            "--batch_size",
            "4",
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "2",
        ]
    )
    assert len(result["history"]) == 2
    assert not (tmp_path / "out" / "ref_cache").exists()  # the logps column served


def test_jsonl_layout_with_image_paths(tmp_path):
    rows = make_synthetic_records(12, seed=6)
    lines = []
    for row in rows:
        for k in (1, 2):
            name = f"img_{row['idx']}_{k}.png"
            (tmp_path / name).write_bytes(row[f"image_{k}"]["bytes"])
            row[f"image_path_{k}"] = name
            del row[f"image_{k}"]
        lines.append(json.dumps({k: v for k, v in row.items() if not k.startswith("scene")}))
    (tmp_path / "data.jsonl").write_text("\n".join(lines))
    train = load_train_script()
    result = train.main(
        [
            "--data",
            str(tmp_path / "data.jsonl"),
            "--heldout",
            "4",
            "--batch_size",
            "4",
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "2",
            "--ref",
            "model",
        ]
    )
    assert len(result["history"]) == 2


@pytest.mark.parametrize(
    "extra",
    [
        ["--loss", "mdpo"],
        ["--loss", "dpo", "--lora", "--ref", "lora"],
        ["--forward", "shared", "--ref", "model"],
        ["--forward", "shared", "--lora", "--ref", "lora", "--gradient_checkpointing"],
    ],
)
def test_other_objectives_and_references(tmp_path, extra):
    train = load_train_script()
    result = train.main(
        [
            *SMALL,
            "--output_dir",
            str(tmp_path),
            "--max_steps",
            "2",
            "--lora_r",
            "4",
            "--lora_alpha",
            "8",
            *extra,
        ]
    )
    assert len(result["history"]) == 2 and all(
        torch.isfinite(torch.tensor(r["loss"])) for r in result["history"]
    )


def test_bad_record_stops_before_training(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = make_synthetic_records(12, seed=7)
    for row in rows:
        row.pop("scene_1"), row.pop("scene_2")
    rows[5]["image_1"] = {"bytes": io.BytesIO(b"junk").getvalue(), "path": None}
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    train = load_train_script()
    args = [
        "--data",
        str(tmp_path / "d.parquet"),
        "--heldout",
        "2",
        "--batch_size",
        "2",
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "1",
    ]
    with pytest.raises(BadRecord, match=r"idx=5: field 'image_1'"):
        train.main(args)
    assert not (tmp_path / "out" / "metrics.jsonl").exists()
    assert train.main([*args, "--skip_bad_records"])["skipped"] == 1


def save_tiny_checkpoint(folder, tiny):
    """The tiny model and its processor as a LLaVA checkpoint folder."""
    from transformers import LlavaProcessor

    tokenizer, model, image_processor = tiny
    model.save_pretrained(folder)
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=model.config.vision_config.patch_size,
        vision_feature_select_strategy="default",
    )
    processor.save_pretrained(folder)
    return folder


def test_real_model_folder_loads_through_auto_classes(tmp_path, tiny):
    """--model_name_or_path: a LLaVA checkpoint folder (model + processor) loads offline."""
    folder = save_tiny_checkpoint(tmp_path / "llava-tiny", tiny)
    train = load_train_script()
    result = train.main(
        [
            "--model_name_or_path",
            str(folder),
            "--output_dir",
            str(tmp_path / "o"),
            "--max_steps",
            "2",
            "--gradient_checkpointing",
            *SMALL,
        ]
    )
    assert len(result["history"]) == 2


def test_checkpoint_loads_with_the_attention_chosen_per_sub_model(tmp_path, tiny, monkeypatch):
    """build_policy hands attention_implementation's per-sub-config choice (as with flash-attn
    installed and the shared-prefix forward) to from_pretrained."""
    from symmpo.train import model as model_module

    folder = save_tiny_checkpoint(tmp_path / "llava-tiny", tiny)
    asked = []

    def choose(device, shared_prefix=False):
        asked.append(shared_prefix)
        return {"text_config": "sdpa", "vision_config": "eager"} if shared_prefix else "eager"

    monkeypatch.setattr(model_module, "attention_implementation", choose)
    shared, *_ = model_module.build_policy(str(folder), 0, torch.device("cpu"), False, True)
    plain, *_ = model_module.build_policy(str(folder), 0, torch.device("cpu"), False)
    assert asked == [True, False]
    assert shared.config.text_config._attn_implementation == "sdpa"
    assert shared.config.vision_config._attn_implementation == "eager"
    assert plain.config.text_config._attn_implementation == "eager"


def test_reference_cache_resumes_and_keys_on_fingerprint(tmp_path, tiny):
    from symmpo.train.forwards import score_batch
    from symmpo.train.reference_cache import ReferenceCache, fingerprint

    collator = make_collator(tiny)
    recs = records(5, seed=9)
    calls = []

    def score(batch):
        calls.append(len(batch["idx"]))
        return score_batch(tiny[1], batch, average=False)

    key = fingerprint(model="m", max_length=2048)
    assert key != fingerprint(model="m", max_length=1024)
    cache = ReferenceCache(tmp_path, key)
    assert cache.fill(recs[:3], collator, score, batch_size=2) == 3
    lines = cache.path.read_text().splitlines()
    cache.path.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])  # interrupted mid-line
    resumed = ReferenceCache(tmp_path, key)
    assert resumed.fill(recs, collator, score, batch_size=2) == 3  # idx 2 (torn), 3, 4
    again = ReferenceCache(tmp_path, key)
    assert again.missing(recs) == []
    expected = score_batch(tiny[1], collator(recs), average=False)
    torch.testing.assert_close(again.lookup([r.idx for r in recs]), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss", ["symmpo", "dpo"])
def test_logits_path_scores_like_the_hidden_path(tiny, loss):
    from symmpo.train.forwards import score_batch

    batch = make_collator(tiny, loss)(records(2, seed=13))
    a = score_batch(tiny[1], batch, average=False)
    b = score_batch(tiny[1], batch, average=False, logits_path=True)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    ref = torch.zeros(batch["input_ids"].shape[0])
    x = compute_loss(tiny[1], batch, ref, loss, SymMPOConfig())
    y = compute_loss(tiny[1], batch, ref, loss, SymMPOConfig(), logits_path=True)
    assert x.loss.item() == pytest.approx(y.loss.item(), rel=1e-5)


def test_duplicate_idx_and_an_earlier_run_are_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = make_synthetic_records(12, seed=3)
    for row in rows:
        row.pop("scene_1"), row.pop("scene_2")
    rows[7]["idx"] = 2
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    train = load_train_script()
    args = [
        "--data",
        str(tmp_path / "d.parquet"),
        "--heldout",
        "2",
        "--batch_size",
        "2",
        "--max_steps",
        "1",
        "--eval_generate",
        "0",
    ]
    with pytest.raises(BadRecord, match=r"idx=2: field 'idx' is not unique"):
        train.main([*args, "--output_dir", str(tmp_path / "a")])
    assert (
        train.main([*args, "--output_dir", str(tmp_path / "b"), "--skip_bad_records"])["skipped"]
        == 1
    )
    with pytest.raises(UsageError, match=r"holds an earlier run"):
        train.main([*args, "--output_dir", str(tmp_path / "b"), "--skip_bad_records"])


def test_released_logps_are_sums_so_averaging_recomputes_the_reference(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = make_synthetic_records(12, seed=5)
    for row in rows:
        row["logps"] = [-10.0, -12.0, -11.0, -11.5, -10.5]
        row.pop("scene_1"), row.pop("scene_2")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    train = load_train_script()
    train.main(
        [
            "--data",
            str(tmp_path / "d.parquet"),
            "--heldout",
            "4",
            "--batch_size",
            "4",
            "--output_dir",
            str(tmp_path / "o"),
            "--max_steps",
            "1",
            "--average_log_prob",
        ]
    )
    assert (tmp_path / "o" / "ref_cache").exists()  # per-token means were computed, not reused


def test_resume_keeps_the_saved_shared_attention_route(tmp_path, monkeypatch):
    """--shared_attention auto on resume takes the route the run trained with (a machine where
    auto would choose otherwise must not switch it, nor recompute the reference cache); an
    explicit other route is refused."""
    from symmpo.train import shared_varlen

    train = load_train_script()
    out = tmp_path / "run"
    args = [*SMALL, "--output_dir", str(out), "--forward", "shared", "--save_steps", "1"]
    train.main([*args, "--max_steps", "1", "--shared_attention", "mask"])
    monkeypatch.setattr(shared_varlen, "flash_supported", lambda q: True)  # auto would say varlen
    resumed = train.main([*args, "--max_steps", "2", "--resume"])
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["args"]["shared_attention"] == "mask"
    assert len(list((out / "ref_cache").glob("*"))) == 1  # one reference pass, one cache file
    assert [r["step"] for r in resumed["history"]] == [2]
    with pytest.raises(UsageError, match=r"trained with the mask route; allowed: mask or auto"):
        train.main([*args, "--max_steps", "3", "--resume", "--shared_attention", "varlen"])
