"""Evaluation of a SymMPO run: preference accuracy and margins, hallucination metrics, curves.

    python -m symmpo.evaluate --checkpoint out/symmpo-tiny/checkpoint-1200
    python -m symmpo.evaluate --checkpoint CKPT --amber_dir AMBER/   # AMBER generative task
    python -m symmpo.evaluate --checkpoint CKPT --chair_questions q.jsonl \\
        --chair_annotations objects.jsonl [--chair_synonyms synonyms.json]   # Object HalBench
    python -m symmpo.evaluate --chair_responses answers.jsonl --chair_annotations objects.jsonl
    python -m symmpo.evaluate --check_reference data/ [--model_name_or_path M] [--limit 32]
    python -m symmpo.evaluate generate --benchmark NAME --benchmark_dir DIR --answers FILE \
        (--checkpoint CKPT | --model_name_or_path M)    # the paper's benchmarks: answers
    python -m symmpo.evaluate score --benchmark NAME --benchmark_dir DIR --answers FILE \
        [--judge_url URL --judge_model M | --judge_requests F [--judge_replies F]]

Metrics:
- preference accuracy on held-out records: how often the policy gives the preferred response the
  higher log-prob (log p(y_w|m) > log p(y_l|m); for SymMPO also y_w over y_w' on m and y_w' over
  y_w on m'), the reward accuracy beta(r_w - r_l) > 0, and the mean reward margin;
- on the embedded synthetic set: greedy answers to held-out questions and the hallucination rate,
  the fraction of answers naming a (colour, shape) absent from the scene;
- --chair_* and --amber_dir: quick CHAIR-style checks with the original CHAIR denominators and
  word matching after plural folding, NOT the benchmarks' official numbers (those come from
  ``generate`` and ``score``, symmpo.eval.scorers): CHAIRs = answers with a hallucinated
  object / answers, CHAIRi = hallucinated mentions / all mentions; for AMBER's generative items
  CHAIR, Cover and Hal over each image's short hallucination list;
- --check_reference: does a data file's logps column fit the initial model, --template and
  --image_aspect_ratio? The largest |difference| of the sequences' log-prob sums (and
  averages) from the column over the first --limit records (default 32); nothing is appended
  to eval.jsonl.

Every evaluation appends one JSON line to ``<output_dir>/eval.jsonl``; the trainer's
``plot_curves`` draws ``<output_dir>/curves.png`` from ``metrics.jsonl`` and ``eval.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from symmpo.train.templates import TEMPLATES

from .hallucination import amber_metrics, chair_metrics
from .readers import load_item_images, read_amber, read_jsonl

NO_SYNONYMS_WARNING = (
    "warning: no --chair_synonyms: CHAIR's vocabulary is then only the objects named in "
    "--chair_annotations, so an object no image holds is never counted as a hallucination; "
    "pass the COCO synonym list for Object HalBench's numbers"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m symmpo.evaluate",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--checkpoint", help="a checkpoint-<step> folder written by train.py")
    parser.add_argument("--output_dir", help="where eval.jsonl goes (default: the run's folder)")
    parser.add_argument("--amber_dir")
    parser.add_argument("--chair_questions", help="JSONL {image_id, image, question}")
    parser.add_argument("--chair_responses", help="JSONL {image_id, answer}: score given answers")
    parser.add_argument("--chair_annotations", help="JSONL {image_id, objects}")
    parser.add_argument("--chair_synonyms", help="JSON {object: [synonyms]}")
    parser.add_argument("--limit", type=int, default=None, help="score the first N items only")
    check = parser.add_argument_group("--check_reference")
    check.add_argument("--check_reference", metavar="DATA", help="a data file or folder")
    check.add_argument("--model_name_or_path", help="default: the tiny built-in model")
    check.add_argument("--template", choices=TEMPLATES, default="llava_v1")
    check.add_argument("--image_aspect_ratio", choices=("crop", "pad"), default="crop")
    check.add_argument("--max_length", type=int, default=2048)
    check.add_argument("--seed", type=int, default=0, help="the tiny model's seed")
    return parser


def main(argv=None) -> dict:
    """Run the evaluations the flags ask for, append the result to eval.jsonl, print and return
    it. ``generate`` and ``score`` as the first argument: the benchmark subcommands."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("generate", "score"):
        from .benchmark_cli import main as benchmark_main

        return benchmark_main(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.check_reference:
        return _check_reference(args)
    if not args.checkpoint and not args.chair_responses:
        parser.error("give --checkpoint (a model to evaluate) or --chair_responses")
    default_dir = pathlib.Path(args.checkpoint).parent if args.checkpoint else pathlib.Path(".")
    out_dir = pathlib.Path(args.output_dir) if args.output_dir else default_dir
    result: dict = {}
    model = collator = None
    if args.checkpoint:
        from .checkpoint import evaluate_checkpoint

        model, collator, run, result = evaluate_checkpoint(args.checkpoint)
        result["step"] = run["step"]
        result["checkpoint"] = str(args.checkpoint)
    if args.chair_annotations:
        annotations = {r["image_id"]: r["objects"] for r in read_jsonl(args.chair_annotations)}
        synonyms = None
        if args.chair_synonyms:
            synonyms = json.loads(pathlib.Path(args.chair_synonyms).read_text())
        else:
            print(NO_SYNONYMS_WARNING, file=sys.stderr)
        if args.chair_responses:
            responses = {r["image_id"]: r["answer"] for r in read_jsonl(args.chair_responses)}
        else:
            items = read_jsonl(args.chair_questions)[: args.limit]
            responses = _answer_items(model, collator, items, args.chair_questions, "image_id")
        chair = chair_metrics(responses, annotations, synonyms)
        result.update({f"chair_{k}": v for k, v in chair.items()})
    if args.amber_dir:
        items, notes = read_amber(args.amber_dir)
        responses = _answer_items(model, collator, items[: args.limit], args.amber_dir, "id")
        result.update({f"amber_{k}": v for k, v in amber_metrics(responses, notes).items()})
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "eval.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=1))
    return result


def _check_reference(args) -> dict:
    from .reference_check import check_reference, summary

    try:
        result = check_reference(
            args.check_reference,
            args.model_name_or_path,
            args.template,
            args.image_aspect_ratio,
            limit=args.limit or 32,
            max_length=args.max_length,
            seed=args.seed,
        )
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
    print(summary(result))
    print(json.dumps(result, indent=1))
    return result


def _answer_items(model, collator, items, base, key) -> dict:
    """{item[key]: greedy answer} of question items whose images lie under ``base``."""
    if model is None:
        raise SystemExit("generating answers needs --checkpoint")
    from .generation import generate_answers

    images = load_item_images(items, base)
    answers = generate_answers(model, collator, [i["question"] for i in items], images)
    return {item[key]: a for item, a in zip(items, answers, strict=True)}
