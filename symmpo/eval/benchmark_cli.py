"""``python -m symmpo.evaluate generate|score``: the paper's benchmarks by their official rules.

    generate --benchmark NAME --benchmark_dir DIR --answers FILE (--checkpoint CKPT |
             --model_name_or_path M) [--batch_size 8] [--num_beams] [--temperature]
             [--max_new_tokens] [--limit N]
    score    --benchmark NAME --benchmark_dir DIR --answers FILE [--judge_url URL
             --judge_model M] [--judge_requests FILE] [--judge_replies FILE]

NAME: amber, objhal, mmhal, hallusion, mmstar (``symmpo.eval.scorers``). ``generate`` writes the
answers file the benchmark's official scorer reads (``symmpo.eval.benchmark_answers``);
``score`` scores such a file with no model and no GPU, prints the metrics and appends them as
one JSON line to ``eval.jsonl`` in the current folder. A judge, where a benchmark needs one:
an OpenAI-compatible endpoint (key from $OPENAI_API_KEY), or offline: ``--judge_requests``
receives the requests, ``--judge_replies`` gives the replies (JSONL ``{id, reply}``).
"""

from __future__ import annotations

import argparse
import json
import pathlib

from .benchmark_answers import RELEASED_GENERATION
from .scorers import BENCHMARKS, scorer

#: The released evaluation's judge per benchmark: (model, max_tokens), the defaults of
#: --judge_model and --judge_max_tokens.
RELEASED_JUDGE = {
    "objhal": ("gpt-3.5-turbo-0125", None),
    "mmhal": ("gpt-4-1106-preview", 512),
    "hallusion": ("gpt-4", None),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m symmpo.evaluate",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="answer a benchmark's official questions")
    score = commands.add_parser("score", help="score an answers file by the official rules")
    for sub in (generate, score):
        sub.add_argument("--benchmark", choices=BENCHMARKS, required=True)
        sub.add_argument("--benchmark_dir", required=True, help="the benchmark's official files")
        sub.add_argument("--answers", required=True, help="the answers file (official format)")
    source = generate.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint-<step> folder written by train.py")
    source.add_argument("--model_name_or_path", help="a LLaVA-1.5 in the Hugging Face format")
    generate.add_argument("--batch_size", type=int, default=8)
    generate.add_argument("--num_beams", type=int, help="default: the released script's (3)")
    generate.add_argument("--temperature", type=float, help="default: the released script's")
    generate.add_argument("--max_new_tokens", type=int, help="default: the released 1024")
    generate.add_argument("--template", choices=("llava_v1", "processor"), default="llava_v1")
    generate.add_argument("--image_aspect_ratio", choices=("crop", "pad"), default="pad")
    generate.add_argument("--limit", type=int, help="answer the first N questions only")
    score.add_argument("--judge_url", help="an OpenAI-compatible endpoint, e.g. .../v1")
    score.add_argument("--judge_model", help="default: the released evaluation's judge model")
    score.add_argument("--judge_max_tokens", type=int, help="default: the released setting")
    score.add_argument("--judge_requests", help="offline: write the judge requests here")
    score.add_argument("--judge_replies", help="offline: the judge's replies (JSONL)")
    return parser


def main(argv) -> dict:
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        path = _generate(args)
        print(f"answers for {args.benchmark} written to {path}")
        return {"answers": str(path)}
    judge = None
    if args.judge_url or args.judge_requests or args.judge_replies:
        from .judge import Judge

        model, max_tokens = RELEASED_JUDGE.get(args.benchmark, (None, None))
        judge = Judge(
            args.judge_url,
            args.judge_model or model,
            requests_out=args.judge_requests,
            replies_in=args.judge_replies,
            max_tokens=args.judge_max_tokens or max_tokens,
        )
    from .judge import JudgeError

    try:
        result = scorer(args.benchmark).score(args.answers, args.benchmark_dir, judge=judge)
    except (JudgeError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"{args.benchmark}: {error}") from error
    result = {"benchmark": args.benchmark, "answers": str(args.answers), **result}
    with open(pathlib.Path("eval.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=1))
    return result


def _generate(args) -> pathlib.Path:
    import torch

    from ..train.build import build_collator, build_model, rebuild_run
    from ..train.flags import build_parser as train_parser
    from ..train.templates import get_template
    from .benchmark_answers import generate_benchmark_answers

    if args.checkpoint:
        run = rebuild_run(args.checkpoint)
        model, collator = run.model, run.collator
    else:
        flags = ["--model_name_or_path", args.model_name_or_path]
        run_args = train_parser().parse_args(flags)
        run_args.lora = True  # only so that build_model loads bf16 weights on a GPU: no adapters
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer, processor, _ = build_model(run_args, device, device.type == "cuda")
        collator = build_collator(run_args, model, tokenizer, processor)
    model.eval()
    collator.template = get_template(args.template, collator.tokenizer)
    collator.image_aspect_ratio = args.image_aspect_ratio
    released = RELEASED_GENERATION[args.benchmark]
    settings = tuple(
        released[i] if given is None else given
        for i, given in enumerate((args.temperature, args.num_beams, args.max_new_tokens))
    )
    return generate_benchmark_answers(
        model,
        collator,
        args.benchmark,
        args.benchmark_dir,
        args.answers,
        batch_size=args.batch_size,
        settings=settings,
        limit=args.limit,
    )
