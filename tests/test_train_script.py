"""train.py end to end on the tiny default (CPU, seconds): logging, checkpoints and exact
resumption, the data layouts, the objectives and references, a real model folder, bad records."""

import io
import json
import shutil

import pytest
import torch
from train_script import load_train_script

from symmpo.train.cli import UsageError
from symmpo.train.data import BadRecord
from symmpo.train.synthetic import make_synthetic_records

SMALL = ["--n_train", "24", "--heldout", "8", "--batch_size", "4", "--eval_batch_size", "8"]


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


def test_real_model_folder_loads_through_auto_classes(tmp_path, tiny_checkpoint):
    """--model_name_or_path: a LLaVA checkpoint folder (model + processor) loads offline."""
    folder = tiny_checkpoint
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
    with pytest.raises(UsageError, match=r"--shared_attention varlen \(the run has mask\)"):
        train.main([*args, "--max_steps", "3", "--resume", "--shared_attention", "varlen"])


def files_and_contents(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_each_result_prints_once_and_the_run_says_where_it_saved(tmp_path, capsys):
    out = tmp_path / "run"
    load_train_script().main([*SMALL, "--max_steps", "2", "--output_dir", str(out)])
    printed = capsys.readouterr().out
    assert printed.count("held-out before training:") == 1
    assert printed.count("held-out after step 2:") == 1
    assert printed.count("preference accuracy, log p(y_w|m) > log p(y_l|m)") == 1  # the table
    last = printed.strip().splitlines()[-1]
    assert last.startswith(f"saved in {out}:")
    for name in ("checkpoint-2", "metrics.jsonl", "eval.jsonl", "curves.png"):
        assert name in last and (out / name).exists(), name


def test_resuming_a_finished_run_says_so_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*SMALL, "--max_steps", "2", "--output_dir", str(out)]
    load_train_script().main(args)
    before = files_and_contents(out)
    capsys.readouterr()
    result = load_train_script().main([*args, "--resume"])
    assert result["finished"] and result["step"] == 2
    assert "finished at step 2" in capsys.readouterr().out
    assert files_and_contents(out) == before
