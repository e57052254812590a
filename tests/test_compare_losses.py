"""benchmarks/compare_losses.py: the variants of a seed start from one supervised model, and the
table is the mean and spread of what the runs' eval.jsonl files say."""

import csv
import json
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare_losses  # noqa: E402

TINY = "--n_train 16 --heldout 4 --batch_size 4 --max_steps 2 --sft_steps 3 --eval_generate 2"


def last_and_first(run: pathlib.Path) -> tuple[dict, dict]:
    rows = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    return rows[0], rows[-1]


def test_variants_share_the_supervised_model_and_the_table_summarises_the_runs(tmp_path):
    work, results = tmp_path / "runs", tmp_path / "results"
    argv = ["--seeds", "0", "1", "--jobs", "2", "--train_flags", TINY]
    argv += ["--variant", "dpo=--loss dpo", "--variant", "symmpo, no margin=--margin_weight 0"]
    table = compare_losses.main([*argv, "--work_dir", str(work), "--results", str(results)])

    # One supervised model per seed, in the shared cache; each variant's run started from it.
    assert len(list((work / "sft_cache").glob("sft-*.pt"))) == 2
    for seed in (0, 1):
        dpo = last_and_first(work / f"dpo-seed{seed}")
        other = last_and_first(work / f"symmpo--no-margin-seed{seed}")
        assert dpo[0]["stage"] == other[0]["stage"] == "sft"
        for key in ("logp_chosen", "swap_accuracy", "hallucination_rate"):
            assert dpo[0][key] == other[0][key], key  # the same model before preference training
        assert dpo[1]["step"] == other[1]["step"] == 2

    # The table: means and sample standard deviations of the runs' own evaluations.
    by_name = {e["variant"]: e for e in table}
    assert list(by_name) == ["supervised", "dpo", "symmpo, no margin"]
    for name, folder, index in (
        ("supervised", "dpo", 0),
        ("dpo", "dpo", 1),
        ("symmpo, no margin", "symmpo--no-margin", 1),
    ):
        values = [last_and_first(work / f"{folder}-seed{s}")[index]["logp_chosen"] for s in (0, 1)]
        assert by_name[name]["logp_chosen"] == pytest.approx(np.mean(values))
        assert by_name[name]["logp_chosen_sd"] == pytest.approx(np.std(values, ddof=1))
    changes = [
        last_and_first(work / f"dpo-seed{s}")[1]["hallucination_rate"]
        - last_and_first(work / f"dpo-seed{s}")[0]["hallucination_rate"]
        for s in (0, 1)
    ]
    assert by_name["dpo"]["hallucination_change"] == pytest.approx(np.mean(changes))
    assert by_name["supervised"]["hallucination_change"] is None
    with open(results / "compare_losses.csv", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 6  # 2 supervised + 2 x 2 runs
    assert "| symmpo, no margin | 2 |" in (results / "compare_losses.md").read_text()
    assert (results / "compare_losses.png").stat().st_size > 0


def test_a_variant_without_flags_separator_is_refused():
    with pytest.raises(SystemExit):
        compare_losses.parse_args(["--variant", "symmpo"])


def test_a_run_without_its_final_evaluation_is_refused(tmp_path):
    """A run stopped during its last evaluation has no row at its last step: an error naming
    the run, never its step-0 (supervised) row read as the trained model's."""
    run = tmp_path / "symmpo-seed0"
    run.mkdir()
    (run / "run_args.json").write_text(json.dumps({"max_steps": 300}))
    (run / "eval.jsonl").write_text(json.dumps({"stage": "sft", "step": 0}) + "\n")
    with pytest.raises(RuntimeError, match="lacks the evaluation at step 300"):
        compare_losses.read_evals(run)
