"""The training micro-batches, collated in DataLoader workers in the order the steps use them.

Item ``i`` is micro-batch ``i % grad_accum`` of optimizer step ``start_step + i // grad_accum``
on this process: the step's examples come from ``data.batch_records`` (a seeded permutation per
epoch, so any step is reached without replaying the earlier ones) and this process takes its
slice of them (micro-batch ``m`` of every process before micro-batch ``m + 1`` of any). The
order therefore depends on the seed and the step alone, whatever the number of workers: a
resumed run collates exactly the batches the uninterrupted run would have. Workers decode the
images and tokenize while the model trains; ``workers=0`` collates in the main process.
"""

from __future__ import annotations

import os

import torch

from .data import batch_records


class MicroBatches(torch.utils.data.Dataset):
    """The run's micro-batches from ``start_step`` to ``max_steps`` (see the module docstring)."""

    def __init__(self, records, collator, args, global_batch, world, rank, start_step):
        """``args``: the run's flags (batch_size, grad_accum, seed, max_steps)."""
        self.records, self.collator = records, collator
        self.global_batch, self.batch_size, self.grad_accum = (
            global_batch,
            args.batch_size,
            args.grad_accum,
        )
        self.world, self.rank, self.seed = world, rank, args.seed
        self.start_step, self.max_steps = start_step, args.max_steps

    def __len__(self) -> int:
        return (self.max_steps - self.start_step) * self.grad_accum

    def __getitem__(self, i: int) -> dict:
        step, micro = self.start_step + i // self.grad_accum, i % self.grad_accum
        examples = batch_records(self.records, step, self.global_batch, self.seed)
        start = (micro * self.world + self.rank) * self.batch_size
        return self.collator(examples[start : start + self.batch_size])


def micro_batch_loader(dataset: MicroBatches, workers: int) -> torch.utils.data.DataLoader:
    """An iterator over ``dataset`` in order, collated by ``workers`` processes ahead."""
    if workers > 0:  # forked workers share the parent's tokenizer: keep its threads off there
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        prefetch_factor=2 if workers > 0 else None,
    )
