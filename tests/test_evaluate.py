"""Evaluation (symmpo.eval): hand-computed CHAIR and AMBER values, the synthetic hallucination
check, and `python -m symmpo.evaluate` (symmpo.eval.cli) on a saved checkpoint."""

import json

import pytest
from train_script import load_train_script

from symmpo.eval.cli import main
from symmpo.eval.hallucination import (
    amber_metrics,
    build_synonyms,
    chair_metrics,
    fold,
    mentioned_objects,
    scene_hallucinations,
)
from symmpo.train.synthetic import make_synthetic_records


def test_chair_by_hand():
    responses = {1: "A dog and a cat sit on a sofa.", 2: "Two people stand near a red car."}
    annotations = {1: ["dog", "sofa"], 2: ["person", "car"]}
    synonyms = {"person": ["people", "man"], "cat": ["kitten"]}
    # Response 1 mentions dog, cat, sofa (cat is absent); response 2 mentions person, car.
    # CHAIRs = 1 of 2 responses; CHAIRi = 1 hallucinated of 5 mentions.
    result = chair_metrics(responses, annotations, synonyms)
    assert result["CHAIRs"] == pytest.approx(0.5)
    assert result["CHAIRi"] == pytest.approx(0.2)
    assert result["mentions"] == 5


def test_amber_by_hand():
    annotations = {
        7: {"truth": ["tree", "sky"], "hallu": ["car", "dog"]},
        8: {"truth": ["table"], "hallu": ["chair"]},
    }
    responses = {7: "Trees under the sky, and a dog.", 8: "A wooden table."}
    # 7: mentions tree, sky, dog (dog hallucinated); 8: table. CHAIR = 1/4, Cover = 3/3, Hal = 1/2
    result = amber_metrics(responses, annotations)
    assert result["CHAIR"] == pytest.approx(0.25)
    assert result["Cover"] == pytest.approx(1.0)
    assert result["Hal"] == pytest.approx(0.5)


def test_word_matching():
    assert [fold(w) for w in ("Dogs", "boxes", "glasses", "berries", "sky")] == [
        "dog",
        "box",
        "glass",
        "berry",
        "sky",
    ]
    table = build_synonyms(["traffic light", "light"])
    assert mentioned_objects("Two traffic lights and one light.", table) == [
        "traffic light",
        "light",
    ]


def test_synthetic_scene_hallucination():
    record = make_synthetic_records(1, seed=4)[0]
    assert scene_hallucinations(record["resp_1_w"], record["scene_1"]) == 0
    present = {(g["colour"], g["shape"]) for g in record["scene_1"]}
    absent = next(
        (c, s)
        for c in ("red", "green", "blue", "yellow", "purple")
        for s in ("circle", "square", "triangle")
        if (c, s) not in present
    )
    assert (
        scene_hallucinations(
            f"There is one {absent[0]} {absent[1]} on the left.", record["scene_1"]
        )
        == 1
    )


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    train = load_train_script()
    out = tmp_path_factory.mktemp("run")
    train.main(
        [
            "--n_train",
            "16",
            "--heldout",
            "4",
            "--batch_size",
            "4",
            "--max_steps",
            "4",
            "--eval_steps",
            "2",
            "--eval_generate",
            "2",
            "--logging_steps",
            "1",
            "--output_dir",
            str(out),
        ]
    )
    return out


def test_training_writes_eval_jsonl_and_curves(trained_run):
    rows = [json.loads(line) for line in (trained_run / "eval.jsonl").open()]
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert {
        "logp_accuracy",
        "reward_accuracy",
        "reward_margin",
        "hallucination_rate",
        "described_rate",
    } <= set(rows[-1])
    # The untrained model's answer at step 0 is stray byte tokens: escaped, never U+FFFD.
    assert all("\ufffd" not in r["example_answer"] for r in rows)
    assert (trained_run / "curves.png").stat().st_size > 10_000


def test_evaluate_cli_on_checkpoint_with_amber_and_chair_files(trained_run, tmp_path):
    rows = make_synthetic_records(2, seed=8)
    amber = tmp_path / "amber"
    (amber / "image").mkdir(parents=True)
    queries, notes = [], []
    for i, row in enumerate(rows, 1):
        (amber / "image" / f"AMBER_{i}.png").write_bytes(row["image_1"]["bytes"])
        queries.append({"id": i, "image": f"AMBER_{i}.png", "query": "Describe the image."})
        notes.append(
            {
                "id": i,
                "type": "generative",
                "truth": [g["shape"] for g in row["scene_1"]],
                "hallu": ["dog"],
            }
        )
    (amber / "query_generative.json").write_text(json.dumps(queries))
    (amber / "annotations.json").write_text(json.dumps(notes))
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"image_id": 1, "answer": "a dog on a square"}\n')
    objects = tmp_path / "objects.jsonl"
    objects.write_text('{"image_id": 1, "objects": ["square"]}\n{"image_id": 2, "objects": []}\n')

    synonyms = tmp_path / "synonyms.json"
    synonyms.write_text(json.dumps({"dog": ["puppy"]}))
    checkpoint = sorted(trained_run.glob("checkpoint-*"))[-1]
    result = main(
        [
            "--checkpoint",
            str(checkpoint),
            "--amber_dir",
            str(amber),
            "--chair_responses",
            str(answers),
            "--chair_annotations",
            str(objects),
            "--chair_synonyms",
            str(synonyms),
        ]
    )
    assert result["step"] == 4 and 0 <= result["logp_accuracy"] <= 1
    assert result["amber_responses"] == 2 and 0 <= result["amber_CHAIR"] <= 1
    assert result["chair_CHAIRs"] == 1.0 and result["chair_CHAIRi"] == pytest.approx(0.5)
    last = json.loads((trained_run / "eval.jsonl").read_text().splitlines()[-1])
    assert last["checkpoint"] == str(checkpoint)


def test_checkpoint_of_a_varlen_run_evaluates_like_the_run(tmp_path, monkeypatch):
    """A --forward shared --shared_attention varlen run: evaluate rebuilds the model on the same
    attention and scores the checkpoint as the run's own last evaluation did."""
    from symmpo.eval import checkpoint as eval_checkpoint
    from symmpo.train.shared_varlen import VARLEN_ATTENTION

    train = load_train_script()
    out = tmp_path / "run"
    train.main(
        [
            "--n_train",
            "8",
            "--heldout",
            "4",
            "--batch_size",
            "4",
            "--max_steps",
            "2",
            "--eval_generate",
            "1",
            "--forward",
            "shared",
            "--shared_attention",
            "varlen",
            "--output_dir",
            str(out),
        ]
    )
    rebuilt = []
    real = eval_checkpoint.rebuild_run
    monkeypatch.setattr(
        eval_checkpoint, "rebuild_run", lambda c: rebuilt.append(real(c)) or rebuilt[-1]
    )
    result = main(["--checkpoint", str(out / "checkpoint-2")])
    (run,) = rebuilt
    for model in (run.model, run.reference.model):  # policy and reference (full fine-tuning)
        assert (
            model is not None and model.config.text_config._attn_implementation == VARLEN_ATTENTION
        )
    assert run.reference.model is not run.model
    last = json.loads((out / "eval.jsonl").read_text().splitlines()[-1])
    for key in ("logp_accuracy", "reward_accuracy", "reward_margin", "hallucination_rate"):
        assert result[key] == pytest.approx(last[key], rel=1e-5, abs=1e-7), key


def test_a_run_with_the_supervised_stage_evaluates_from_its_shared_cache(tmp_path, monkeypatch):
    """Full fine-tuning after a supervised stage cached in --sft_cache_dir: evaluate, run from
    another folder, rebuilds the supervised model from that cache (policy start and reference)
    and scores the checkpoint as the run's last evaluation did; without the cache it refuses
    rather than training the stage again."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    flags = "--n_train 16 --heldout 4 --batch_size 4 --max_steps 2 --eval_generate 2".split()
    flags += ["--sft_steps", "3", "--sft_cache_dir", "cache", "--output_dir", str(out)]
    monkeypatch.chdir(tmp_path)
    load_train_script(supervised_stage=True).main(flags)  # the cache given relative
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # stored absolute, it is still found
    result = main(["--checkpoint", str(out / "checkpoint-2")])
    last = json.loads((out / "eval.jsonl").read_text().splitlines()[-1])
    for key in ("logp_accuracy", "reward_margin", "swap_accuracy", "hallucination_rate"):
        assert result[key] == pytest.approx(last[key], rel=1e-5, abs=1e-7), key
    for path in cache.glob("sft-*.pt"):
        path.rename(tmp_path / path.name)
    with pytest.raises(FileNotFoundError, match="supervised model is not in"):
        main(["--checkpoint", str(out / "checkpoint-2")])
