"""Does a data file's ``logps`` column fit a model, a template and an image preprocessing?

    python -m symmpo.evaluate --check_reference DATA [--model_name_or_path M] \\
        [--template llava_v1|processor] [--image_aspect_ratio crop|pad] [--limit 32]

The released data carries reference log-probs computed once with the initial model under the
released template and ``crop`` images; ``train.py`` uses them as the reference only under those
settings. This check scores the first ``--limit`` usable records' five sequences with the
initial model (the tiny default of ``--seed``, or the checkpoint) exactly as training scores the
policy, and reports the largest |difference| from the column's sums (and averages, where the
column has them), with the record and sequence where it occurs. A fitting file differs by
float rounding (about 1e-5 in float32; more under bf16 on a GPU); a file made under another
template, image preprocessing or model differs by 0.1 to whole nats (0.1 for an untrained
model, whose distributions are nearly uniform).
"""

from __future__ import annotations

import torch

SEQUENCE_NAMES = ("1_w", "1_l", "1_2", "2_w", "2_2")


def check_reference(
    data: str,
    model_name_or_path: str | None = None,
    template: str = "llava_v1",
    image_aspect_ratio: str = "crop",
    limit: int = 32,
    max_length: int = 2048,
    seed: int = 0,
    batch_size: int = 8,
) -> dict:
    """{records, max_abs_diff_sum, max_abs_diff_average (None without averages), worst: {idx,
    sequence, file, model}, template, image_aspect_ratio, skipped}."""
    from symmpo.train.build import build_collator, build_model, seed_everything
    from symmpo.train.data import check_records, load_records
    from symmpo.train.flags import build_parser
    from symmpo.train.forwards import FORWARDS
    from symmpo.train.references import Scorer

    flags = ["--data", data, "--template", template, "--image_aspect_ratio", image_aspect_ratio]
    flags += ["--max_length", str(max_length), "--seed", str(seed)]
    if model_name_or_path:
        flags += ["--model_name_or_path", model_name_or_path]
    args = build_parser().parse_args(flags)
    seed_everything(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cuda"
    model, tokenizer, processor, _ = build_model(args, device, bf16)
    model.eval()
    collator = build_collator(args, model, tokenizer, processor)
    records, skipped = load_records(data, skip_bad=True)
    records = [r for r in records if r.ref_logps is not None]
    records, bad = check_records(records, collator, skip_bad=True)
    records = records[:limit]
    if not records:
        raise ValueError(f"--check_reference {data}: no usable record with a logps column")
    scores = {}
    for average in (False, True):
        scorer = Scorer(FORWARDS["naive"], average, False, device, bf16)
        parts = [
            scorer(model, collator(records[i : i + batch_size])).view(5, -1).T.cpu()
            for i in range(0, len(records), batch_size)
        ]
        scores[average] = torch.cat(parts).double()  # (N, 5)
    file_sums = torch.tensor([r.ref_logps for r in records], dtype=torch.float64)
    diff = (scores[False] - file_sums).abs()
    worst = int(diff.argmax())
    row, kind = divmod(worst, 5)
    result = {
        "records": len(records),
        "max_abs_diff_sum": float(diff.max()),
        "worst": {
            "idx": records[row].idx,
            "sequence": SEQUENCE_NAMES[kind],
            "file": float(file_sums[row, kind]),
            "model": float(scores[False][row, kind]),
        },
        "max_abs_diff_average": None,
        "template": template,
        "image_aspect_ratio": image_aspect_ratio,
        "skipped": len(skipped) + len(bad),
    }
    if all(r.ref_avg_logps is not None for r in records):
        file_averages = torch.tensor([r.ref_avg_logps for r in records], dtype=torch.float64)
        result["max_abs_diff_average"] = float((scores[True] - file_averages).abs().max())
    return result


def summary(result: dict) -> str:
    """One line for people: the largest difference and where."""
    worst = result["worst"]
    return (
        f"reference check over {result['records']} record(s), --template {result['template']} "
        f"--image_aspect_ratio {result['image_aspect_ratio']}: largest |model - file| of a "
        f"sequence's log-prob sum {result['max_abs_diff_sum']:.3g} (record idx={worst['idx']}, "
        f"sequence {worst['sequence']}: file {worst['file']:.4f}, model {worst['model']:.4f})"
    )
