"""Every bad input gets a clear error naming the argument, what it got and what it expects."""

import numpy as np
import pytest
import torch
from batches import NON_DEFAULT_WEIGHTS, make_batch

from symmpo import (
    SymMPOConfig,
    dpo_loss,
    mdpo_loss,
    sequence_logps,
    symmpo_loss,
    symmpo_loss_from_logps,
)


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


# The Triton path (interpreted here) checks values inside its kernels: same errors, raised where
# the caller next looks at the result (its metrics) instead of at the call.
IMPLS = ["torch", "triton"]


def looked_at(*args, **kwargs) -> dict:
    """symmpo_loss, then the look a trainer's logging takes at its result."""
    return symmpo_loss(*args, **kwargs).metrics()


@pytest.mark.parametrize("impl", IMPLS)
def test_label_outside_vocab(batch, impl):
    logits, labels, ref = batch
    labels[7, 4] = 11
    with pytest.raises(ValueError, match=r"labels\[7, 4\] = 11 is outside \[0, 11\)"):
        looked_at(logits, labels, ref, impl=impl)
    labels[7, 4] = -5
    with pytest.raises(ValueError, match=r"labels\[7, 4\] = -5"):
        looked_at(logits, labels, ref, impl=impl)
    labels[7, 4] = 3
    labels[2, 0] = 1000  # position 0 predicts nothing, but a bad id is still an error
    with pytest.raises(ValueError, match=r"labels\[2, 0\] = 1000"):
        looked_at(logits, labels, ref, impl=impl)
    with pytest.raises(ValueError, match=r"labels\[2, 0\] = 1000"):
        looked_at(logits, labels, ref_logits=logits, impl=impl)


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
        looked_at(logits, labels, ref, impl=impl)


def test_float64_ref_logps_beyond_float32_range(batch):
    """The Triton path reads the reference in float32: -1e300 is -inf there, and says so."""
    logits, labels, ref = batch
    ref = ref.double()
    ref[2] = -1e300
    with pytest.raises(ValueError, match=r"ref_logps holds non-finite values"):
        looked_at(logits, labels, ref, impl="triton")


def test_ref_logps_not_floating(batch):
    logits, labels, _ = batch
    with pytest.raises(TypeError, match=r"ref_logps must be a floating tensor"):
        symmpo_loss(logits, labels, torch.zeros(10, dtype=torch.long))


@pytest.mark.parametrize("impl", IMPLS)
def test_no_target_names_the_row(batch, impl):
    logits, labels, ref = batch
    labels[5, 1:] = -100
    with pytest.raises(ValueError, match=r"row 5 \(contrast_on_image of example 1\).*allow_empty"):
        looked_at(logits, labels, ref, impl=impl)


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


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_triton_defers_the_check_to_where_the_caller_looks(batch, case):
    """By default the Triton path never syncs: every output and the gradient are NaN, and the
    error is raised by out.raise_if_invalid() and out.metrics(), naming what was wrong."""
    logits, labels, ref = batch
    spoil, message = BAD_INPUTS[case]
    spoil(labels, ref)
    x = logits.clone().requires_grad_(True)
    out = symmpo_loss(x, labels, ref, impl="triton")
    assert torch.isnan(out.loss) and torch.isnan(out.policy_logps).all()
    out.loss.backward()  # no raise here: the gradient is NaN where targets are, so visible
    assert torch.isnan(x.grad).any()
    with pytest.raises(ValueError, match=message):
        out.raise_if_invalid()
    with pytest.raises(ValueError, match=message):
        out.metrics()


def test_valid_inputs_pass_the_deferred_check(batch):
    logits, labels, ref = batch
    out = symmpo_loss(logits.clone().requires_grad_(True), labels, ref, impl="triton")
    out.raise_if_invalid()
    eager = symmpo_loss(logits, labels, ref, impl="torch")
    assert out.metrics() == pytest.approx(eager.metrics(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("inplace_grad", [False, True])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_triton_immediate_checks_raise_in_backward(batch, case, inplace_grad):
    """With immediate_checks and gradients on, the Triton path reads its validation flags in
    the backward, right before its kernel's launch (no host sync in the forward): every output
    is NaN, and backward raises the same error before writing the logits' gradient (the logits
    stay intact under inplace_grad, and a second backward says the same)."""
    logits, labels, ref = batch
    spoil, message = BAD_INPUTS[case]
    spoil(labels, ref)
    x = logits.clone().requires_grad_(True)
    out = symmpo_loss(
        x, labels, ref, impl="triton", inplace_grad=inplace_grad, immediate_checks=True
    )
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
    """Scored reference logits (immediate checks): a bad label still raises in backward
    (averaged or not), and
    the reference logits are not kept alive for that check."""
    import gc
    import weakref

    logits, labels, _ = batch
    labels[2, 3] = 11
    ref_logits = logits + 0.5
    alive = weakref.ref(ref_logits)
    x = logits.clone().requires_grad_(True)
    out = symmpo_loss(
        x,
        labels,
        ref_logits=ref_logits,
        impl="triton",
        average_log_prob=average,
        immediate_checks=True,
    )
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


def _first_target(labels, row):
    """The first position of ``row`` whose logits predict a target."""
    return int((labels[row, 1:] != -100).nonzero()[0])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_ref_logps_non_finite_names_the_row(batch, bad, impl):
    logits, labels, ref = batch
    ref[3] = bad
    with pytest.raises(ValueError, match=r"ref_logps holds non-finite .*row 3 \(rejected of ex"):
        looked_at(logits, labels, ref, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_ref_logits_non_finite_at_a_target(batch, bad, impl):
    """NaN or inf in the reference logits where a target is scored raises like a non-finite
    ref_logps, naming ref_logits and the row (without gradients: at the call)."""
    logits, labels, _ = batch
    ref_logits = logits + 0.5
    ref_logits[7, _first_target(labels, 7), 4] = bad
    message = r"ref_logits give a non-finite reference log-prob .*row 7 \(chosen_on_contrast of"
    with pytest.raises(ValueError, match=message):
        looked_at(logits, labels, ref_logits=ref_logits, impl=impl)
    with pytest.raises(ValueError, match=message):
        looked_at(logits, labels, ref_logits=ref_logits, impl=impl, average_log_prob=True)


@pytest.mark.parametrize("inplace_grad", [False, True])
def test_triton_ref_logits_non_finite_raises_in_backward(batch, inplace_grad):
    """With gradients and immediate checks the Triton path flags a non-finite scored reference
    like a non-finite ref_logps: every output NaN, backward raises before writing the
    gradient."""
    logits, labels, _ = batch
    ref_logits = logits + 0.5
    ref_logits[2, _first_target(labels, 2), 0] = float("nan")
    x = logits.clone().requires_grad_(True)
    out = symmpo_loss(
        x,
        labels,
        ref_logits=ref_logits,
        impl="triton",
        inplace_grad=inplace_grad,
        immediate_checks=True,
    )
    assert torch.isnan(out.loss) and torch.isnan(out.policy_logps).all()
    with pytest.raises(
        ValueError, match=r"ref_logits give a non-finite .*row 2 \(rejected of example 0\)"
    ):
        out.loss.backward()
    assert x.grad is None and torch.equal(x.detach(), logits)


OVERLAP = r"inplace_grad=True needs logits whose elements do not share memory"


def _overlapping_views(logits):
    """Views of (10, 6, 11) whose elements share memory: a stride-0 expand, and rows that
    overlap without a zero stride (torch cannot tell that one: only the stride rule can)."""
    row = logits[:1].clone()
    base = logits.flatten().clone()
    return [row.expand_as(logits), base.as_strided(logits.shape, (11, 11, 1))]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("view", [0, 1])
def test_inplace_grad_refuses_logits_sharing_memory(batch, impl, view):
    logits, labels, ref = batch
    shared = _overlapping_views(logits)[view]
    with pytest.raises(ValueError, match=OVERLAP):
        symmpo_loss(shared, labels, ref, impl=impl, inplace_grad=True)
    with pytest.raises(ValueError, match=OVERLAP):
        sequence_logps(shared, labels, impl=impl, inplace_grad=True)
    # Without inplace_grad such a view is fine: a gradient of its own is written.
    out = symmpo_loss(shared, labels, ref, impl=impl)
    assert torch.isfinite(out.loss)


def test_inplace_grad_overlap_rule_without_torchs_helper(batch, monkeypatch):
    """Where torch lacks _debug_has_internal_overlap the stride rule decides alone."""
    logits, labels, ref = batch
    monkeypatch.delattr(torch, "_debug_has_internal_overlap", raising=False)
    for shared in _overlapping_views(logits):
        with pytest.raises(ValueError, match=OVERLAP):
            symmpo_loss(shared, labels, ref, impl="triton", inplace_grad=True)
    wide = torch.randn(10, 6, 16)
    for view in (wide[..., :11], wide.transpose(0, 1).contiguous().transpose(0, 1)[..., 2:13]):
        symmpo_loss(view, labels, ref, impl="torch", inplace_grad=True)


def test_inplace_grad_accepts_views_that_do_not_overlap(batch):
    """A vocabulary slice (not dense: torch says "too hard") shares no memory: accepted, and
    its in-place gradient is the out-of-place one."""
    logits, labels, ref = batch
    grads = []
    for inplace in (False, True):
        wide = torch.cat([logits, torch.randn(10, 6, 5)], -1).requires_grad_(True)
        symmpo_loss(
            wide[..., :11], labels, ref, impl="triton", inplace_grad=inplace
        ).loss.backward()
        grads.append(wide.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)


NUMBER_TYPES = {
    "np.float32": np.float32,
    "np.float64": np.float64,
    "0-d tensor": torch.tensor,
    "0-d float64 tensor": lambda v: torch.tensor(v, dtype=torch.float64),
    "0-d array": np.array,
}


@pytest.mark.parametrize("kind", sorted(NUMBER_TYPES))
def test_options_accept_numpy_scalars_and_0d_tensors(batch, kind):
    """Every float option takes NumPy scalars and 0-d tensors, stored as Python floats: the
    same loss as the Python floats they hold."""
    make = NUMBER_TYPES[kind]
    logits, labels, ref = batch
    weights = {name: make(value) for name, value in NON_DEFAULT_WEIGHTS.items()}
    floats = {name: float(value) for name, value in weights.items()}
    config = SymMPOConfig(**weights)
    assert config == SymMPOConfig(**floats)
    assert all(type(getattr(config, name)) is float for name in weights)
    got = symmpo_loss(logits, labels, ref, impl="torch", **weights)
    expected = symmpo_loss(logits, labels, ref, impl="torch", **floats)
    assert got.loss.item() == expected.loss.item()
    assert SymMPOConfig(beta=make(2)).beta == 2.0  # an integer number too
    policy, ref3 = torch.randn(3, 2), torch.randn(3, 2)
    beta, cond, anchor = make(0.2), make(0.7), make(0.4)
    assert dpo_loss(policy[:2], ref3[:2], beta=beta).loss.item() == pytest.approx(
        dpo_loss(policy[:2], ref3[:2], beta=float(beta)).loss.item(), rel=0, abs=0
    )
    got = mdpo_loss(policy, ref3, beta=beta, cond_weight=cond, anchor_weight=anchor)
    expected = mdpo_loss(
        policy, ref3, beta=float(beta), cond_weight=float(cond), anchor_weight=float(anchor)
    )
    assert got.loss.item() == expected.loss.item()
    assert SymMPOConfig(ignore_index=np.int64(-1)).ignore_index == -1


REFUSED = [
    (np.float32("nan"), r"np\.float32\(nan\)"),
    (torch.tensor(float("inf")), r"tensor\(inf\)"),
    (True, "True"),
    (np.bool_(True), r"np\.True_"),
    ("0.1", "'0.1'"),
    (torch.tensor(True), r"tensor\(True\)"),
    (torch.tensor([0.1, 0.2]), r"a tensor of shape \(2,\)"),
    (torch.tensor([0.1]), r"a tensor of shape \(1,\)"),
    (np.array([0.1, 0.2]), r"an array of shape \(2,\)"),
    (None, "None"),
]


@pytest.mark.parametrize("value,shown", REFUSED, ids=[repr(v) for v, _ in REFUSED])
def test_options_refuse_what_is_not_one_finite_number(batch, value, shown):
    logits, labels, ref = batch
    with pytest.raises(
        ValueError, match=rf"SymMPOConfig\.beta must be a finite number > 0, got {shown}"
    ):
        SymMPOConfig(beta=value)
    with pytest.raises(
        ValueError, match=rf"SymMPOConfig\.delta must be a finite number, got {shown}"
    ):
        symmpo_loss(logits, labels, ref, delta=value)
    with pytest.raises(ValueError, match=r"SymMPOConfig\.beta must be a finite number > 0"):
        dpo_loss(torch.zeros(2, 1), torch.zeros(2, 1), beta=value)
    with pytest.raises(ValueError, match=r"mdpo_loss's cond_weight must be a finite number >= 0"):
        mdpo_loss(torch.zeros(3, 1), torch.zeros(3, 1), cond_weight=value)
