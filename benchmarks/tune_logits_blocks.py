"""Block size and warps of the log-prob kernels on the current GPU (run by device_check.sh).

Times the forward and backward kernels alone at N = 32000 bf16 positions, V = 32064, for a few
(BLOCK_V, num_warps) pairs, prints GB/s (forward N V 2 bytes, backward 2 N V 2) and appends rows
with provider "symmpo_triton_bv<BLOCK_V>_w<warps>".
"""

from __future__ import annotations

import torch
import triton.testing
from results_csv import environment, make_row, write_rows

from symmpo_kernels import logprobs_backward, logprobs_forward

CANDIDATES = [(32768, 16), (32768, 32), (16384, 16), (8192, 8), (8192, 16), (4096, 4), (4096, 8)]


def main(n_positions: int = 32000, vocab: int = 32064) -> None:
    rows = 20
    seq_len = n_positions // rows + 1
    logits = torch.randn(rows, seq_len, vocab, device="cuda", dtype=torch.bfloat16)
    labels = torch.randint(0, vocab, (rows, seq_len), device="cuda")
    labels[:, 0] = -100
    n = int((labels[:, 1:] != -100).sum())
    grad_seq = torch.randn(rows, device="cuda")
    env = environment()
    out = []
    print(f"{'BLOCK_V':>8} {'warps':>5} {'fwd GB/s':>9} {'bwd GB/s':>9}")
    for block, warps in CANDIDATES:
        kw = dict(block_v=block, num_warps=warps)
        _, _, lse = logprobs_forward(logits, labels, **kw)
        fwd = triton.testing.do_bench(
            lambda kw=kw: logprobs_forward(logits, labels, **kw), return_mode="median"
        )
        bwd = triton.testing.do_bench(
            lambda kw=kw, lse=lse: logprobs_backward(logits, labels, lse, grad_seq, **kw),
            return_mode="median",
        )
        gb_f, gb_b = n * vocab * 2 / fwd / 1e6, 2 * n * vocab * 2 / bwd / 1e6
        print(f"{block:>8} {warps:>5} {gb_f:>9.0f} {gb_b:>9.0f}")
        provider = f"symmpo_triton_bv{block}_w{warps}"
        for mode, ms, gb in (("forward_kernel", fwd, gb_f), ("backward_kernel", bwd, gb_b)):
            common = ("logits_path_all_targets", provider, mode, n, vocab, 0, "bfloat16")
            out += [make_row(*common, "ms", ms, env), make_row(*common, "gbps", gb, env)]
    write_rows(out)


if __name__ == "__main__":
    main()
