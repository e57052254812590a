"""Evaluation of a SymMPO run: preference accuracy and margins, hallucination metrics, curves.

    python -m symmpo.evaluate --checkpoint out/symmpo-tiny/checkpoint-1200
    python -m symmpo.evaluate --checkpoint CKPT --amber_dir AMBER/   # AMBER generative task
    python -m symmpo.evaluate --checkpoint CKPT --chair_questions q.jsonl \\
        --chair_annotations objects.jsonl [--chair_synonyms synonyms.json]   # Object HalBench
    python -m symmpo.evaluate --chair_responses answers.jsonl --chair_annotations objects.jsonl

Metrics:
- preference accuracy on held-out records: how often the policy gives the preferred response the
  higher log-prob (log p(y_w|m) > log p(y_l|m); for SymMPO also y_w over y_w' on m and y_w' over
  y_w on m'), the reward accuracy beta(r_w - r_l) > 0, and the mean reward margin;
- on the embedded synthetic set: greedy answers to held-out questions and the hallucination rate,
  the fraction of answers naming a (colour, shape) absent from the scene;
- CHAIR (Object HalBench): with the objects each answer mentions (words of a vocabulary,
  synonyms mapped to their object), CHAIRs = answers with a hallucinated object / answers and
  CHAIRi = hallucinated mentions / all mentions;
- AMBER generative: CHAIR (hallucinated objects / mentioned objects over all answers), Cover
  (truth objects mentioned / truth objects) and Hal (answers with a hallucinated object), with
  objects matched by word after plural folding (AMBER's own script lemmatises with spaCy).

Every evaluation appends one JSON line to ``<output_dir>/eval.jsonl``; ``plot_curves`` draws
``<output_dir>/curves.png`` from ``metrics.jsonl`` and ``eval.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

import torch

from .train.model import unwrap

# -- matching object words ---------------------------------------------------------------------


def fold(word: str) -> str:
    """Lower-case singular form: 'Dogs' -> 'dog', 'boxes' -> 'box', 'glasses' stays 'glass'."""
    word = word.lower()
    if len(word) > 3 and word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    if len(word) > 3 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 2 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def mentioned_objects(text: str, synonyms: dict[str, str]) -> list[str]:
    """Objects a text mentions, in order, one per occurrence: the text's words and word pairs
    (folded) looked up in ``synonyms`` (folded phrase -> object); two-word phrases first."""
    words = [fold(w) for w in re.findall(r"[A-Za-z]+", text)]
    found, i = [], 0
    while i < len(words):
        pair = " ".join(words[i : i + 2])
        if i + 1 < len(words) and pair in synonyms:
            found.append(synonyms[pair])
            i += 2
        elif words[i] in synonyms:
            found.append(synonyms[words[i]])
            i += 1
        else:
            i += 1
    return found


def build_synonyms(objects, synonyms: dict[str, list[str]] | None = None) -> dict[str, str]:
    """folded phrase -> object, from object names and an optional {object: [synonyms]}."""
    table = {" ".join(fold(w) for w in o.split()): o for o in objects}
    for obj, words in (synonyms or {}).items():
        table[" ".join(fold(w) for w in obj.split())] = obj
        for word in words:
            table[" ".join(fold(w) for w in word.split())] = obj
    return table


def chair_metrics(responses: dict, annotations: dict, synonyms: dict | None = None) -> dict:
    """CHAIRs and CHAIRi of ``responses`` {id: answer} against ``annotations`` {id: objects}.

    The vocabulary is every annotated object plus ``synonyms`` {object: [words]} (Object
    HalBench uses the COCO categories with their synonym lists)."""
    vocabulary = set().union(*map(set, annotations.values())) | set(synonyms or {})
    table = build_synonyms(vocabulary, synonyms)
    with_hallucination = mentions = hallucinated = 0
    for key, answer in responses.items():
        if key not in annotations:
            raise KeyError(f"response {key!r} has no annotation")
        truth = set(annotations[key])
        objects = mentioned_objects(answer, table)
        bad = [o for o in objects if o not in truth]
        mentions += len(objects)
        hallucinated += len(bad)
        with_hallucination += bool(bad)
    return {
        "CHAIRs": with_hallucination / max(len(responses), 1),
        "CHAIRi": hallucinated / max(mentions, 1),
        "responses": len(responses),
        "mentions": mentions,
    }


def amber_metrics(responses: dict, annotations: dict) -> dict:
    """AMBER generative metrics: annotations {id: {"truth": [...], "hallu": [...]}}."""
    mentioned_total = hallucinated_total = truth_total = covered_total = with_hallucination = 0
    for key, answer in responses.items():
        note = annotations[key]
        truth, hallu = set(note["truth"]), set(note["hallu"]) - set(note["truth"])
        table = build_synonyms(truth | hallu)
        objects = set(mentioned_objects(answer, table))
        bad = objects & hallu
        mentioned_total += len(objects)
        hallucinated_total += len(bad)
        truth_total += len(truth)
        covered_total += len(objects & truth)
        with_hallucination += bool(bad)
    n = max(len(responses), 1)
    return {
        "CHAIR": hallucinated_total / max(mentioned_total, 1),
        "Cover": covered_total / max(truth_total, 1),
        "Hal": with_hallucination / n,
        "responses": len(responses),
    }


def read_amber(folder) -> tuple[list[dict], dict]:
    """AMBER's generative task: query_generative.json ({id, image, query}, images under
    image/ or images/) and annotations.json ({id, type, truth, hallu, ...})."""
    folder = pathlib.Path(folder)
    queries = json.loads((folder / "query_generative.json").read_text())
    notes = {
        a["id"]: a
        for a in json.loads((folder / "annotations.json").read_text())
        if a.get("type", "generative") == "generative"
    }
    image_dir = next((folder / d for d in ("image", "images") if (folder / d).is_dir()), folder)
    items = [{"id": q["id"], "image": image_dir / q["image"], "question": q["query"]}
             for q in queries if q["id"] in notes]  # fmt: skip
    return items, notes


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# -- generation and the embedded set -------------------------------------------------------------


@torch.no_grad()
def generate_answers(model, collator, questions, images, max_new_tokens: int = 48) -> list[str]:
    """Greedy answers of the LLaVA ``model`` to (question, PIL image) pairs, one at a time."""
    llava = unwrap(model)
    device = llava.lm_head.weight.device
    tokenizer = collator.tokenizer
    answers = []
    for question, image in zip(questions, images, strict=True):
        ids = torch.tensor([collator.encode_prompt(question)], device=device)
        pixels = collator.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        out = llava.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids),
            pixel_values=pixels.to(device, llava.dtype), max_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=collator.pad_id, eos_token_id=tokenizer.eos_token_id,
        )  # fmt: skip
        answers.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip())
    return answers


def parse_groups(answer: str) -> list[dict]:
    from .train.synthetic import parse_description

    return parse_description(answer)


def scene_hallucinations(answer: str, scene: list[dict]) -> int:
    """Groups an answer names whose (colour, shape) is absent from the scene (an answer that
    names no group hallucinates nothing; ``described_rate`` counts those that name one)."""
    present = {(g["colour"], g["shape"]) for g in scene}
    return sum((g["colour"], g["shape"]) not in present for g in parse_groups(answer))


@torch.no_grad()
def preference_metrics(model, records, collator, reference_logps, args, autocast, forward) -> dict:
    """Held-out accuracies and mean reward margins (see the module docstring)."""
    from .train.objectives import score_batch

    sums = {"logp_accuracy": 0.0, "reward_accuracy": 0.0, "reward_margin": 0.0}
    if args.loss == "symmpo":
        sums.update(contrast_accuracy_m=0.0, contrast_accuracy_m_prime=0.0,
                    reward_margin_pair1=0.0, reward_margin_pair2=0.0)  # fmt: skip
    count = 0
    for start in range(0, len(records), args.eval_batch_size):
        chunk = records[start : start + args.eval_batch_size]
        batch = collator(chunk)
        with autocast():
            logps = score_batch(
                model, batch, args.average_log_prob, forward, getattr(args, "logits_path", False)
            ).cpu()
        ref = reference_logps(batch).cpu().float()
        kinds = len(collator.sequences)
        s = logps.view(kinds, -1)
        r = args.beta * (logps - ref).view(kinds, -1)  # beta r_k; beta_contrast for k = 3, 4
        if args.loss == "symmpo" and getattr(args, "beta_contrast", None) is not None:
            r[3:] *= args.beta_contrast / args.beta
        sums["logp_accuracy"] += float((s[0] > s[1]).sum())
        sums["reward_accuracy"] += float((r[0] > r[1]).sum())
        sums["reward_margin"] += float((r[0] - r[1]).sum())
        if args.loss == "symmpo":
            sums["contrast_accuracy_m"] += float((s[0] > s[2]).sum())
            sums["contrast_accuracy_m_prime"] += float((s[4] > s[3]).sum())
            sums["reward_margin_pair1"] += float((r[0] - r[2]).sum())
            sums["reward_margin_pair2"] += float((r[4] - r[3]).sum())
        count += len(chunk)
    return {k: v / max(count, 1) for k, v in sums.items()}


def evaluate_run(model, records, collator, reference_logps, args, device, use_bf16, forward):
    """Preference metrics on ``records``, plus, for records of the embedded set, the
    hallucination rate of greedy answers to the first ``args.eval_generate`` questions."""
    was_training = model.training
    model.eval()

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    result = preference_metrics(model, records, collator, reference_logps, args, autocast, forward)
    scenes = [r for r in records if "scene_1" in r.extra][: getattr(args, "eval_generate", 0)]
    if scenes:
        with autocast():
            answers = generate_answers(
                model, collator, [r.question for r in scenes], [r.load_image() for r in scenes]
            )
        pairs = zip(answers, scenes, strict=True)
        flagged = [scene_hallucinations(a, r.extra["scene_1"]) > 0 for a, r in pairs]
        described = [bool(parse_groups(a)) for a in answers]
        result["hallucination_rate"] = sum(flagged) / len(flagged)
        result["described_rate"] = sum(described) / len(described)
        result["example_answer"] = answers[0][:120]
    if was_training:
        model.train()
    return result


# -- curves --------------------------------------------------------------------------------------


def plot_curves(output_dir) -> pathlib.Path | None:
    """curves.png: training loss, train and held-out accuracies, hallucination rate by step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir = pathlib.Path(output_dir)
    train = (
        read_jsonl(output_dir / "metrics.jsonl") if (output_dir / "metrics.jsonl").exists() else []
    )
    evals = read_jsonl(output_dir / "eval.jsonl") if (output_dir / "eval.jsonl").exists() else []
    if not train and not evals:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    if train:
        axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
        for key in ("accuracy_dpo", "accuracy_pair1", "accuracy_pair2"):
            if key in train[0]:
                axes[1].plot(
                    [r["step"] for r in train], [r[key] for r in train], label=f"train {key}"
                )
    for key in ("logp_accuracy", "reward_accuracy", "contrast_accuracy_m_prime"):
        points = [(r["step"], r[key]) for r in evals if key in r]
        if points:
            axes[1].plot(*zip(*points, strict=True), "o--", label=f"held-out {key}")
    points = [(r["step"], r["hallucination_rate"]) for r in evals if "hallucination_rate" in r]
    if points:
        axes[2].plot(*zip(*points, strict=True), "o-", color="C3", label="hallucination rate")
    for ax, title in zip(axes, ("loss", "accuracy", "hallucination rate"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out = output_dir / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# -- command line --------------------------------------------------------------------------------


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--checkpoint", help="a checkpoint-<step> folder written by train.py")
    parser.add_argument("--output_dir", help="where eval.jsonl goes (default: the run's folder)")
    parser.add_argument("--amber_dir")
    parser.add_argument("--chair_questions", help="JSONL {image_id, image, question}")
    parser.add_argument("--chair_responses", help="JSONL {image_id, answer}: score given answers")
    parser.add_argument("--chair_annotations", help="JSONL {image_id, objects}")
    parser.add_argument("--chair_synonyms", help="JSON {object: [synonyms]}")
    parser.add_argument("--limit", type=int, default=None, help="score the first N items only")
    args = parser.parse_args(argv)
    if not args.checkpoint and not args.chair_responses:
        parser.error("give --checkpoint (a model to evaluate) or --chair_responses")
    out_dir = pathlib.Path(args.output_dir or (pathlib.Path(args.checkpoint).parent
                                                if args.checkpoint else "."))  # fmt: skip
    result: dict = {}
    model = collator = None
    if args.checkpoint:
        model, collator, run, result = evaluate_checkpoint(args.checkpoint)
        result["step"] = run["step"]
        result["checkpoint"] = str(args.checkpoint)
    if args.chair_annotations:
        annotations = {r["image_id"]: r["objects"] for r in read_jsonl(args.chair_annotations)}
        synonyms = (
            json.loads(pathlib.Path(args.chair_synonyms).read_text())
            if args.chair_synonyms
            else None
        )
        if synonyms is None:
            print("warning: no --chair_synonyms: CHAIR's vocabulary is then only the objects "
                  "named in --chair_annotations, so an object no image holds is never counted "
                  "as a hallucination; pass the COCO synonym list for Object HalBench's numbers",
                  file=sys.stderr)  # fmt: skip
        if args.chair_responses:
            responses = {r["image_id"]: r["answer"] for r in read_jsonl(args.chair_responses)}
        else:
            items = read_jsonl(args.chair_questions)[: args.limit]
            responses = _answer_items(model, collator, items, args.chair_questions, "image_id")
        result.update(
            {f"chair_{k}": v for k, v in chair_metrics(responses, annotations, synonyms).items()}
        )
    if args.amber_dir:
        items, notes = read_amber(args.amber_dir)
        responses = _answer_items(model, collator, items[: args.limit], args.amber_dir, "id")
        result.update({f"amber_{k}": v for k, v in amber_metrics(responses, notes).items()})
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "eval.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=1))
    return result


def _answer_items(model, collator, items, base, key) -> dict:
    from PIL import Image

    if model is None:
        raise SystemExit("generating answers needs --checkpoint")
    base = pathlib.Path(base)
    base = base.parent if base.is_file() else base
    images = [Image.open(base / item["image"] if not pathlib.Path(item["image"]).is_absolute()
                         else item["image"]).convert("RGB") for item in items]  # fmt: skip
    answers = generate_answers(model, collator, [i["question"] for i in items], images)
    return {item[key]: a for item, a in zip(items, answers, strict=True)}


def _usable(records, collator, skip_bad: bool) -> list:
    """The records training used: bad ones skipped (--skip_bad_records) or raising as there."""
    from .train.data import BadRecord

    good = []
    for record in records:
        try:
            collator.check(record)
            good.append(record)
        except BadRecord:
            if not skip_bad:
                raise
    return good


def evaluate_checkpoint(checkpoint):
    """Rebuild the run's model from its checkpoint and evaluate it on the run's held-out set;
    the reference is the initial model (the adapters disabled for LoRA runs)."""
    from types import SimpleNamespace

    from .train.checkpoint import load_weights
    from .train.collator import PreferenceCollator
    from .train.data import load_records, records_from_rows, split_heldout
    from .train.model import add_lora, build_policy, num_image_tokens
    from .train.objectives import FORWARDS, score_batch
    from .train.shared_varlen import use_varlen_attention

    state = json.loads((pathlib.Path(checkpoint) / "trainer_state.json").read_text())
    run = SimpleNamespace(**state["args"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    use_bf16 = device.type == "cuda" and not run.no_bf16
    bf16_weights = use_bf16 and run.lora  # as in training: full fine-tuning keeps fp32 weights
    shared = run.forward == "shared"
    model, tokenizer, processor, _ = build_policy(
        run.model_name_or_path, run.seed, device, bf16_weights, shared
    )
    reference = None
    if not run.lora:
        reference, *_ = build_policy(run.model_name_or_path, run.seed, device, bf16_weights, shared)
        reference.eval()
    if shared and getattr(run, "shared_attention", "mask") == "varlen":  # as in training
        for m in (model, reference):
            if m is not None:
                use_varlen_attention(m)
    if run.lora:
        model = add_lora(model, run.lora_r, run.lora_alpha, run.lora_dropout)
    load_weights(checkpoint, model)
    if run.data is None:
        from .train.synthetic import synthetic_splits

        heldout = records_from_rows(synthetic_splits(run.n_train, run.heldout, seed=run.seed)[1])[0]
    else:
        records, _ = load_records(run.data, skip_bad=run.skip_bad_records)
        heldout = split_heldout(records, run.heldout, run.seed)[1]
    collator = PreferenceCollator(tokenizer, processor, model.config.image_token_id,
                                  num_image_tokens(model.config), max_length=run.max_length,
                                  loss=run.loss, seed=run.seed)  # fmt: skip
    heldout = _usable(heldout, collator, run.skip_bad_records)
    forward = FORWARDS[run.forward]

    def reference_logps(batch):
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            if run.lora:
                with model.disable_adapter():
                    return score_batch(model, batch, run.average_log_prob, forward)
            return score_batch(reference, batch, run.average_log_prob, forward)

    result = evaluate_run(model, heldout, collator, reference_logps, run, device, use_bf16, forward)
    return model, collator, state, result


if __name__ == "__main__":
    main()
