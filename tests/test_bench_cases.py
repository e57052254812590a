"""The benchmark cases: the training-shaped logits-path batches, the floor they are held against,
and the target rows every hidden-states provider is given (benchmarks/README.md)."""

import pathlib
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_logits_path as logits_bench  # noqa: E402
import fused_linear_cases as cases  # noqa: E402

MODES = ["forward", "backward", "full", "full_unchecked", "reference"]


@pytest.mark.parametrize("n_targets", [2000, 4000, 8000, 16000])
def test_training_case_lengths_and_targets(n_targets):
    case = logits_bench.training_case(n_targets)
    assert len(case.lengths) == len(case.targets) == 5 * case.batch
    assert all(600 <= length <= 1000 for length in case.lengths)
    assert all(100 <= count <= 300 for count in case.targets)
    assert sum(case.targets) == case.n_targets == n_targets
    assert case.seq_len == max(case.lengths)
    assert case.n_positions == len(case.lengths) * max(case.lengths)
    assert logits_bench.training_case(n_targets) == case  # seeded: the same case every time
    assert logits_bench.training_case(n_targets, seed=1) != case


def test_training_case_is_drawn_not_uniform():
    case = logits_bench.training_case(8000)
    assert len(set(case.targets)) > 10 and len(set(case.lengths)) > 10


def test_training_case_refuses_totals_that_do_not_fit():
    with pytest.raises(ValueError):
        logits_bench.training_case(10, lengths=(4, 8), targets=(3, 3))  # B = 1: 15 at least


def _target_positions(labels):
    """Per sequence, the logits positions t whose next label is a target."""
    return [torch.nonzero(row[1:] != -100).flatten().tolist() for row in labels]


@pytest.mark.parametrize("n_targets", [2000, 16000])
def test_training_inputs_put_the_targets_inside_each_sequence(n_targets):
    case = logits_bench.training_case(n_targets)
    logits, labels, ref = logits_bench.make_training_inputs(
        case, vocab=7, dtype=torch.float32, device=torch.device("cpu")
    )
    assert logits.shape == (5 * case.batch, max(case.lengths), 7)
    assert labels.shape == logits.shape[:2] and ref.shape == (5 * case.batch,)
    positions = _target_positions(labels)
    total = 0
    for row, (length, count) in enumerate(zip(case.lengths, case.targets, strict=True)):
        assert len(positions[row]) == count
        assert set(positions[row]) <= set(range(length))  # a subset of the sequence's positions
        assert positions[row][-1] == length - 2  # the answer ends the sequence
        assert (labels[row, length:] == -100).all()  # padding is no target
        assert (
            (labels[row][labels[row] != -100] >= 0) & (labels[row][labels[row] != -100] < 7)
        ).all()
        total += count
    assert total == n_targets == int((labels[:, 1:] != -100).sum())


def _floor_by_position(mode, labels, vocab, element):
    """The floor walked position by position: a target row is read in the forward and again in
    the backward; every position's gradient row is written once in the backward."""
    forward = mode != "backward"
    backward = mode in ("backward", "full", "full_unchecked")
    total = 0
    for row in labels:
        for t in range(len(row)):
            is_target = t + 1 < len(row) and int(row[t + 1]) != -100
            if is_target and forward:
                total += vocab * element
            if is_target and backward:
                total += vocab * element
            if backward:
                total += vocab * element
    return total


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("element", [2, 4])
def test_floor_bytes_of_a_training_case(mode, element):
    case = logits_bench.training_case(10, lengths=(4, 8), targets=(1, 3))
    _, labels, _ = logits_bench.make_training_inputs(
        case, vocab=5, dtype=torch.float32, device=torch.device("cpu")
    )
    vocab = 32064
    expected = _floor_by_position(mode, labels, vocab, element)
    n_targets = int((labels[:, 1:] != -100).sum())
    got = logits_bench.floor_bytes(mode, n_targets, labels.numel(), vocab, element)
    assert got == expected


@pytest.mark.parametrize("mode", MODES)
def test_floor_bytes_of_the_all_targets_case(mode):
    _, labels, _ = logits_bench.make_inputs(40, vocab=5, dtype=torch.float32)
    expected = _floor_by_position(mode, labels, 1000, 2)
    n_targets = int((labels[:, 1:] != -100).sum())
    assert n_targets == 40
    assert logits_bench.floor_bytes(mode, n_targets, labels.numel(), 1000, 2) == expected


def test_floor_metrics():
    got = logits_bench.floor_metrics(floor=6_000_000_000, ms=4.0, bandwidth_gbps=3000.0)
    floor_s = 6e9 / 3000e9
    assert got["floor_ms"] == pytest.approx(floor_s * 1e3)
    assert got["floor_fraction"] == pytest.approx(floor_s / 4e-3)
    assert got["gbps"] == pytest.approx(6e9 / 4e-3 / 1e9)


def _ragged_inputs(hidden=8, vocab=13, seed=0):
    """hidden (10, T, H) with 1 to 3 targets a sequence (ragged), weight, labels, ref."""
    case = logits_bench.training_case(20, lengths=(4, 8), targets=(1, 3), seed=seed)
    assert len(set(case.targets)) > 1
    _, labels, ref = logits_bench.make_training_inputs(
        case, vocab=vocab, dtype=torch.float32, device=torch.device("cpu")
    )
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(*labels.shape, hidden, generator=gen, dtype=torch.float64)
    w = torch.randn(vocab, hidden, generator=gen, dtype=torch.float64) / hidden**0.5
    return h.requires_grad_(True), w.requires_grad_(True), labels, ref.double()


def test_target_rows_gather_each_sequence_targets_in_order():
    h, _, labels, _ = _ragged_inputs()
    rows = cases.target_rows(labels)
    positions = _target_positions(labels)
    width = max(len(p) for p in positions)
    gathered = cases.gather(h, rows)
    hf = cases.gather(h, rows, hf_layout=True)
    assert gathered.shape == (labels.shape[0], width, h.shape[-1])
    assert hf.shape == (labels.shape[0], width + 1, h.shape[-1])
    assert rows.target.shape == (labels.shape[0], width)
    for r, targets in enumerate(positions):
        for j, t in enumerate(targets):
            assert torch.equal(gathered[r, j], h[r, t])
            assert int(rows.target[r, j]) == int(labels[r, t + 1])
        assert (rows.target[r, len(targets) :] == -100).all()
    assert torch.equal(hf[:, :width], gathered)
    assert torch.equal(rows.labels[:, 1:], rows.target) and (rows.labels[:, 0] == -100).all()
    assert int((rows.target != -100).sum()) == sum(len(p) for p in positions)


def _loss_and_grads(provider, h, w, labels, ref, **kwargs):
    h.grad = w.grad = None
    loss = cases.PROVIDERS[provider](h, w, labels, ref, **kwargs)
    loss.backward()
    return loss.detach(), h.grad.clone(), w.grad.clone()


@pytest.mark.parametrize(
    "provider", ["eager", "logits_path", "liger_fused_linear_dpo", "symmpo_fused_linear"]
)
def test_target_rows_give_the_all_positions_loss_and_gradients(provider):
    """Fed the target rows (ragged, padded), a provider computes what it computes on every
    position: the same loss, the same gradient of hidden (zeros off the targets) and weight."""
    if provider.startswith("liger"):
        pytest.importorskip("liger_kernel")
    h, w, labels, ref = _ragged_inputs()
    if provider == "logits_path":  # the Triton kernels take float32 at most
        h = h.detach().float().requires_grad_(True)
        w = w.detach().float().requires_grad_(True)
        ref = ref.float()
    rows = cases.target_rows(labels)
    got = _loss_and_grads(provider, h, w, labels, ref, rows=rows)
    without_rows = _loss_and_grads(provider, h, w, labels, ref)
    everywhere = "eager_all_positions" if provider == "symmpo_fused_linear" else provider
    if provider != "symmpo_fused_linear":
        everywhere += "_all_positions"
    expected = _loss_and_grads(everywhere, h, w, labels, ref)
    exact = h.dtype == torch.float64 and provider != "symmpo_fused_linear"  # its loss: float32
    tol = dict(rtol=1e-9, atol=1e-12) if exact else dict(rtol=1e-4, atol=1e-6, check_dtype=False)
    for a, b, c in zip(got, without_rows, expected, strict=True):
        torch.testing.assert_close(a, b, **tol)
        torch.testing.assert_close(a, c, **tol)
    off_target = torch.ones(labels.shape, dtype=torch.bool)
    for r, targets in enumerate(_target_positions(labels)):
        off_target[r, targets] = False
    assert (got[1][off_target] == 0).all()
