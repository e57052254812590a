"""Every bad input gets a clear error naming the argument, what it got and what it expects."""

import pytest
import torch
from batches import make_batch

from symmpo import SymMPOConfig, dpo_loss, symmpo_loss, symmpo_loss_from_logps


@pytest.fixture
def batch():
    return make_batch(batch=2, seq_len=6, vocab=11)


def test_rows_not_multiple_of_five(batch):
    logits, labels, ref = batch
    with pytest.raises(ValueError, match=r"logits has 9 rows; expected a positive multiple of 5"):
        symmpo_loss(logits[:9], labels[:9], ref[:9])


def test_four_dim_logits_need_five_kinds(batch):
    logits, labels, ref = batch
    with pytest.raises(ValueError, match=r"first dimension is 2, expected 5"):
        symmpo_loss(logits.view(2, 5, 6, 11), labels, ref)


def test_labels_shape_mismatch(batch):
    logits, labels, ref = batch
    with pytest.raises(ValueError, match=r"labels of shape \(10, 5\).*expected \(10, 6\)"):
        symmpo_loss(logits, labels[:, :5], ref)


# The Triton path (interpreted here) checks values inside its kernels: same errors.
IMPLS = ["torch", "triton"]


@pytest.mark.parametrize("impl", IMPLS)
def test_label_outside_vocab(batch, impl):
    logits, labels, ref = batch
    labels[7, 4] = 11
    with pytest.raises(ValueError, match=r"labels\[7, 4\] = 11 is outside \[0, 11\)"):
        symmpo_loss(logits, labels, ref, impl=impl)
    labels[7, 4] = -5
    with pytest.raises(ValueError, match=r"labels\[7, 4\] = -5"):
        symmpo_loss(logits, labels, ref, impl=impl)
    labels[7, 4] = 3
    labels[2, 0] = 1000  # position 0 predicts nothing, but a bad id is still an error
    with pytest.raises(ValueError, match=r"labels\[2, 0\] = 1000"):
        symmpo_loss(logits, labels, ref, impl=impl)
    with pytest.raises(ValueError, match=r"labels\[2, 0\] = 1000"):
        symmpo_loss(logits, labels, ref_logits=logits, impl=impl)


def test_float_labels(batch):
    logits, labels, ref = batch
    with pytest.raises(TypeError, match=r"labels must be an integer tensor.*got torch.float32"):
        symmpo_loss(logits, labels.float(), ref)


def test_integer_logits(batch):
    _, labels, ref = batch
    with pytest.raises(TypeError, match=r"logits must be float32, bfloat16 or float16"):
        symmpo_loss(labels.unsqueeze(-1), labels, ref)


@pytest.mark.parametrize("shape", [(9,), (5, 3), (2, 5), (10, 1)])
def test_ref_logps_wrong_shape(batch, shape):
    logits, labels, _ = batch
    with pytest.raises(ValueError, match=r"ref_logps"):
        symmpo_loss(logits, labels, torch.zeros(shape))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_ref_logps_non_finite(batch, bad, impl):
    logits, labels, ref = batch
    ref[3] = bad
    with pytest.raises(ValueError, match=r"ref_logps holds non-finite values"):
        symmpo_loss(logits, labels, ref, impl=impl)


def test_float64_ref_logps_beyond_float32_range(batch):
    """The Triton path reads the reference in float32: -1e300 is -inf there, and says so."""
    logits, labels, ref = batch
    ref = ref.double()
    ref[2] = -1e300
    with pytest.raises(ValueError, match=r"ref_logps holds non-finite values"):
        symmpo_loss(logits, labels, ref, impl="triton")


def test_ref_logps_not_floating(batch):
    logits, labels, _ = batch
    with pytest.raises(TypeError, match=r"ref_logps must be a floating tensor"):
        symmpo_loss(logits, labels, torch.zeros(10, dtype=torch.long))


@pytest.mark.parametrize("impl", IMPLS)
def test_no_target_names_the_row(batch, impl):
    logits, labels, ref = batch
    labels[5, 1:] = -100
    with pytest.raises(ValueError, match=r"row 5 \(contrast_on_image of example 1\).*allow_empty"):
        symmpo_loss(logits, labels, ref, impl=impl)


def test_reference_exactly_once(batch):
    logits, labels, ref = batch
    with pytest.raises(ValueError, match=r"exactly one reference"):
        symmpo_loss(logits, labels)
    with pytest.raises(ValueError, match=r"exactly one reference"):
        symmpo_loss(logits, labels, ref, ref_logits=logits)
    with pytest.raises(ValueError, match=r"ref_logits of shape \(10, 6, 7\) must match"):
        symmpo_loss(logits, labels, ref_logits=logits[..., :7])


def test_unknown_option_and_bad_values(batch):
    logits, labels, ref = batch
    with pytest.raises(TypeError, match=r"unknown SymMPO option\(s\) \['betta'\]"):
        symmpo_loss(logits, labels, ref, betta=0.2)
    with pytest.raises(ValueError, match=r"beta must be a finite number > 0, got -1"):
        SymMPOConfig(beta=-1)
    with pytest.raises(ValueError, match=r"pair_weight must be a finite number >= 0"):
        SymMPOConfig(pair_weight=float("nan"))
    with pytest.raises(ValueError, match=r"impl must be one of"):
        symmpo_loss(logits, labels, ref, impl="cuda")
    with pytest.raises(TypeError, match=r"config must be a SymMPOConfig"):
        symmpo_loss(logits, labels, ref, config={"beta": 0.1})


def test_from_logps_checks(batch):
    with pytest.raises(ValueError, match=r"policy_logps of shape \(7,\)"):
        symmpo_loss_from_logps(torch.zeros(7), torch.zeros(7))
    with pytest.raises(ValueError, match=r"ref_logps of shape \(15,\) does not match"):
        symmpo_loss_from_logps(torch.zeros(10), torch.zeros(15))
    with pytest.raises(ValueError, match=r"policy_logps holds non-finite"):
        symmpo_loss_from_logps(torch.full((10,), float("nan")), torch.zeros(10))
    with pytest.raises(ValueError, match=r"policy_logps of shape \(3,\)"):
        dpo_loss(torch.zeros(3), torch.zeros(3))


def test_not_a_tensor(batch):
    _, labels, ref = batch
    with pytest.raises(TypeError, match=r"logits must be a torch.Tensor, got list"):
        symmpo_loss([[1.0]], labels, ref)


BAD_INPUTS = {
    "label": (lambda labels, ref: labels.__setitem__((7, 4), 11), r"labels\[7, 4\] = 11"),
    "empty": (
        lambda labels, ref: labels[5].__setitem__(slice(1, None), -100),
        r"row 5 \(contrast_on_image of example 1\).*allow_empty",
    ),
    "ref": (
        lambda labels, ref: ref.__setitem__(3, float("nan")),
        r"ref_logps holds non-finite values",
    ),
}


@pytest.mark.parametrize("inplace_grad", [False, True])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_triton_with_gradients_raises_in_backward(batch, case, inplace_grad):
    """With gradients on, the Triton path reads its validation flags in the backward, right
    before its kernel's launch (no host sync in the forward): every output is NaN, and
    backward raises the same error before writing the logits' gradient (the logits stay intact
    under inplace_grad, and a second backward says the same)."""
    logits, labels, ref = batch
    spoil, message = BAD_INPUTS[case]
    spoil(labels, ref)
    x = logits.clone().requires_grad_(True)
    out = symmpo_loss(x, labels, ref, impl="triton", inplace_grad=inplace_grad)
    names = "loss per_example_loss policy_logps rewards dpo pair margin anchor reward_margin_dpo"
    for name in names.split():
        assert torch.isnan(getattr(out, name)).all(), name
    with pytest.raises(ValueError, match=message):
        out.loss.backward(retain_graph=True)
    assert x.grad is None
    assert torch.equal(x.detach(), logits)
    with pytest.raises(ValueError, match=message):  # again: the same error, logits intact
        out.loss.backward()
    assert torch.equal(x.detach(), logits)


@pytest.mark.parametrize("average", [False, True])
def test_triton_with_gradients_and_ref_logits(batch, average):
    """Scored reference logits: a bad label still raises in backward (averaged or not), and
    the reference logits are not kept alive for that check."""
    import gc
    import weakref

    logits, labels, _ = batch
    labels[2, 3] = 11
    ref_logits = logits + 0.5
    alive = weakref.ref(ref_logits)
    x = logits.clone().requires_grad_(True)
    out = symmpo_loss(x, labels, ref_logits=ref_logits, impl="triton", average_log_prob=average)
    del ref_logits
    gc.collect()
    assert alive() is None
    assert torch.isnan(out.loss)
    with pytest.raises(ValueError, match=r"labels\[2, 3\] = 11"):
        out.loss.backward()


def test_triton_with_gradients_allows_what_the_config_allows(batch):
    """Empty sequences with allow_empty are valid: numbers, not NaN, and a gradient; the
    deferred check changes no value of a valid batch."""
    logits, labels, ref = batch
    labels[5, 1:] = -100
    x = logits.clone().requires_grad_(True)
    out = symmpo_loss(x, labels, ref, impl="triton", allow_empty=True)
    with torch.no_grad():
        eager = symmpo_loss(logits, labels, ref, impl="triton", allow_empty=True)
    assert torch.isfinite(out.per_example_loss).all()
    torch.testing.assert_close(out.loss, eager.loss, rtol=0, atol=0)
    out.loss.backward()
    assert torch.isfinite(x.grad).all()
