"""A run's pieces from its flags (symmpo/train/build.py): defaults and the batch check."""

import pytest

from symmpo.train.build import Data, check_batch_fits, resolve_defaults
from symmpo.train.cli import UsageError, build_parser
from symmpo.train.data import default_heldout, split_heldout


def parse(*argv):
    return resolve_defaults(build_parser().parse_args(list(argv)))


def test_defaults_depend_on_the_model():
    tiny = parse()
    assert (tiny.batch_size, tiny.max_steps, tiny.lr, tiny.heldout) == (8, 300, 5e-4, 64)
    assert tiny.sft_steps == 600  # the supervised stage: the tiny model only
    real = parse("--model_name_or_path", "m", "--data", "d")
    assert (real.batch_size, real.max_steps, real.lr, real.heldout) == (4, None, 5e-6, None)
    assert real.sft_steps == 0
    assert parse("--model_name_or_path", "m", "--lora").lr == 2e-5
    assert parse("--lr", "0.5", "--batch_size", "2").lr == 0.5


@pytest.mark.parametrize(("total", "held"), [(5, 0), (12, 1), (300, 30), (10_000, 64)])
def test_heldout_default_scales_and_never_takes_everything(total, held):
    assert default_heldout(total) == held
    train, heldout = split_heldout(list(range(total)), None, seed=0)
    assert len(heldout) == held and len(train) == total - held
    assert sorted(train + heldout) == list(range(total))


def test_batch_check_names_the_sizes_and_heldout():
    args = parse("--batch_size", "4", "--grad_accum", "2")
    with pytest.raises(UsageError, match=r"7 training records \(3 held out \(--heldout\)\)"):
        check_batch_fits(args, Data(list(range(7)), [0, 1, 2], {}), world=1)
    assert check_batch_fits(args, Data(list(range(8)), [], {}), world=1) == 8
