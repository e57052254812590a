"""The reference strategies of symmpo/train/references.py against direct scoring."""

import copy

import torch

from symmpo.train.cli import build_parser
from symmpo.train.forwards import FORWARDS, score_batch
from symmpo.train.references import (
    FrozenCopyReference,
    PrecomputedReference,
    RecordLogps,
    Scorer,
    cache_key,
    choose_reference,
    record_logps_fit,
)
from symmpo.train.templates import ChatTemplate, ReleasedTemplate, get_template


def cpu_scorer() -> Scorer:
    return Scorer(FORWARDS["naive"], False, False, torch.device("cpu"), False)


def test_precomputed_reference_equals_scoring_the_initial_model(
    tmp_path, tiny, make_collator, make_records
):
    model = copy.deepcopy(tiny[1]).eval()
    collator, records = make_collator(), make_records(5, seed=4)
    args = build_parser().parse_args([])
    reference = choose_reference(
        args, model, records, collator, cpu_scorer(), tmp_path, ({"tiny": 0}, {"test": 1})
    )
    assert isinstance(reference, PrecomputedReference)
    assert "5 computed" in reference.prepare(records, collator, batch_size=2)
    batch = collator(records[1:4])
    torch.testing.assert_close(reference(batch), score_batch(model, batch, average=False))
    again = choose_reference(
        args, model, records, collator, cpu_scorer(), tmp_path, ({"tiny": 0}, {"test": 1})
    )
    assert "0 computed" in again.prepare(records, collator)  # the cache on disk served


def test_frozen_copy_keeps_the_initial_weights(tiny, make_collator, make_records):
    policy = copy.deepcopy(tiny[1]).eval()
    collator = make_collator()
    batch = collator(make_records(2, seed=6))
    initial = score_batch(policy, batch, average=False)
    reference = FrozenCopyReference(policy, cpu_scorer())
    with torch.no_grad():
        policy.lm_head.weight.mul_(1.5)  # the policy moves on
    assert not torch.allclose(score_batch(policy, batch, average=False), initial)
    torch.testing.assert_close(reference(batch), initial)


def test_record_logps_serve_the_objectives_sequences_under_the_released_format_only(
    tiny, make_collator, make_records
):
    from symmpo.train.collator import PreferenceCollator
    from symmpo.train.model import num_image_tokens

    records = make_records(3, seed=2)
    for record in records:
        record.ref_logps = [-1.0, -2.0, -3.0, -4.0, -5.0]
        record.ref_avg_logps = [-0.1, -0.2, -0.3, -0.4, -0.5]
    args = build_parser().parse_args([])
    collator = make_collator()
    assert record_logps_fit(args, records, collator) == (True, None)
    batch = collator(records)
    assert torch.equal(
        RecordLogps()(batch),
        torch.tensor([-1.0, -1, -1, -2, -2, -2, -3, -3, -3, -4, -4, -4, -5, -5, -5]),
    )
    averaged = build_parser().parse_args(["--average_log_prob"])
    assert record_logps_fit(averaged, records, collator) == (True, None)
    assert torch.equal(RecordLogps(average=True)(batch), batch["ref_avg_logps"])
    assert torch.allclose(batch["ref_avg_logps"][::3], torch.tensor([-0.1, -0.2, -0.3, -0.4, -0.5]))
    assert record_logps_fit(args, records, make_collator("mdpo")) == (False, None)  # cropped m

    tokenizer, model, processor = tiny
    for template, images in (("processor", "crop"), ("llava_v1", "pad")):
        other = PreferenceCollator(
            tokenizer,
            processor,
            model.config.image_token_id,
            num_image_tokens(model.config),
            template=template,
            image_aspect_ratio=images,
        )
        fits, reason = record_logps_fit(args, records, other)
        assert not fits and "\n" not in reason
        assert f"this run uses --template {template} --image_aspect_ratio {images}" in reason
    records[1].ref_avg_logps = None  # 5 sums only: no averages to serve
    fits, reason = record_logps_fit(averaged, records, collator)
    assert not fits and "holds sums only" in reason
    records[0].ref_logps = None
    assert record_logps_fit(args, records, collator) == (False, None)


def test_cache_key_covers_the_template_and_the_image_preprocessing(tiny, make_collator):
    tokenizer, model, processor = tiny
    args = build_parser().parse_args([])
    parts = ({"tiny": 0}, {"records": "r"})
    key = cache_key(args, *parts, make_collator(), False, model)
    assert cache_key(args, *parts, make_collator(), False, model) == key
    for change in ({"image_mean": [0.5, 0.5, 0.5]}, {"crop_size": {"height": 32, "width": 32}}):
        other = copy.deepcopy(processor)
        for name, value in change.items():
            setattr(other, name, value)
        collator = make_collator(tiny=(tokenizer, model, other))
        assert cache_key(args, *parts, collator, False, model) != key, change
    for template in ("processor", ChatTemplate("{{ messages }}"), ReleasedTemplate(system="Hi.")):
        collator = make_collator()
        collator.template = (
            get_template(template, tokenizer) if isinstance(template, str) else template
        )
        assert cache_key(args, *parts, collator, False, model) != key, template
