"""torch.ops.symmpo.fused_loss: the fused logits path as torch.library custom ops (the Triton
kernels interpreted on the CPU here): torch.library.opcheck, the same numbers as the autograd
Function route, and a step compiled with fullgraph=True. Run by tests/test_custom_ops.py in a
process of their own."""

import pytest
import torch
from batches import make_batch

import symmpo_kernels
from symmpo import SymMPOConfig, symmpo_loss


@pytest.fixture
def batch():
    return make_batch(batch=2, seq_len=6, vocab=11)


@pytest.mark.parametrize("average", [False, True])
def test_opcheck_both_ops(batch, average):
    logits, labels, ref = batch
    weights = list(SymMPOConfig(pair_weight=0.7, anchor_weight=0.3).kernel_weights)
    args = (logits.clone().requires_grad_(True), labels, ref.float(), weights, average)
    torch.library.opcheck(torch.ops.symmpo.fused_loss.default, (*args, -100, False, True))
    with torch.no_grad():
        outputs = torch.ops.symmpo.fused_loss(*args, -100, False, True)
    workspace, lse, grad = outputs[-2], outputs[-1], outputs[4]
    counts = workspace[3 : 3 + labels.shape[0]]
    backward_args = (logits, labels, lse, grad.reshape(-1), torch.tensor(0.5), counts)
    torch.library.opcheck(
        torch.ops.symmpo.fused_loss_backward.default, (*backward_args, average, -100)
    )


@pytest.mark.parametrize("average", [False, True])
def test_custom_op_route_equals_the_autograd_function_route(batch, average):
    """The custom ops (the route under torch.compile) and the autograd Function (eager calls)
    run the same kernels: identical outputs and gradients."""
    from symmpo.config import SymMPOConfig as Config
    from symmpo.output import output_from_terms

    logits, labels, ref = batch
    config = Config(average_log_prob=average)
    x = logits.clone().requires_grad_(True)
    result = symmpo_kernels.fused_loss_result(
        x, labels, ref.float(), config.kernel_weights, average, -100, False, True
    )
    out = output_from_terms(result, ref.float())
    out.loss.backward()
    results = [(out.metrics(), out.per_example_loss, x.grad)]
    y = logits.clone().requires_grad_(True)
    out = symmpo_loss(
        y, labels, ref, impl="triton", average_log_prob=average, immediate_checks=True
    )
    out.loss.backward()
    results.append((out.metrics(), out.per_example_loss, y.grad))
    assert results[0][0] == results[1][0]
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=0)
    torch.testing.assert_close(results[0][2], results[1][2], rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_a_step_calling_the_loss_compiles_without_a_graph_break(batch, backend):
    logits, labels, ref = batch

    def step(x, labels, ref):
        return symmpo_loss(x, labels, ref, impl="triton", pair_weight=0.7).loss

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    x, y = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    loss = compiled(x, labels, ref)
    loss.backward()
    eager = step(y, labels, ref)
    eager.backward()
    torch.testing.assert_close(loss, eager, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, y.grad, rtol=0, atol=0)
