"""Data loaders whose order is a function of (seed, epoch) and that resume mid-epoch.

Lightning saves ``state_dict()`` of every training loader that has one in the checkpoint and
hands it back to ``load_state_dict`` on resume, before the first iteration. A plain
``DataLoader(shuffle=True, generator=g)`` cannot take part: its order depends on how many epochs
``g`` has already shuffled, and a resumed run would start the epoch over. Here the permutation
of epoch ``e`` comes from ``(seed, stream, e)`` alone, and a resumed loader skips the batches
the interrupted run had already delivered, without loading them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def derived_generator(seed: int, *stream: int) -> torch.Generator:
    """A torch generator seeded from ``seed`` and the stream numbers, independent of every
    other stream (numpy's SeedSequence mixes them)."""
    state = np.random.SeedSequence([seed, *stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class EpochSampler(Sampler[int]):
    """Indices ``0..n-1``: a permutation drawn from ``(seed, stream, epoch)`` when ``shuffle``,
    else in order. Lightning calls :meth:`set_epoch` before every epoch; ``start`` skips the
    first indices of the next iteration only (the loader sets it to resume mid-epoch)."""

    def __init__(self, n: int, seed: int, stream: int, shuffle: bool = True) -> None:
        self.n = n
        self.seed = seed
        self.stream = stream
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def order(self, epoch: int) -> torch.Tensor:
        """The indices of ``epoch``, in the order they are drawn."""
        if not self.shuffle:
            return torch.arange(self.n)
        return torch.randperm(self.n, generator=derived_generator(self.seed, self.stream, epoch))

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        yield from self.order(self.epoch)[start:].tolist()


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over an :class:`EpochSampler` that Lightning can checkpoint mid-epoch.

    ``state_dict()`` is the epoch and the number of batches delivered in it; after
    ``load_state_dict`` the next iteration starts at the following batch. Lightning swaps in a
    ``DistributedSampler`` under DDP; the skipped batches are then loaded and dropped (same
    result, slower). A generator is always passed, so making an iterator (which draws the
    workers' base seed) never touches the global torch RNG that noise and penalties use.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        sampler: Sampler[int],
        drop_last: bool = False,
        num_workers: int = 0,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=num_workers,
            generator=generator if generator is not None else torch.Generator().manual_seed(0),
            persistent_workers=kwargs.pop("persistent_workers", num_workers > 0),
            **kwargs,
        )
        self._resume_batches = 0
        self._delivered = 0

    def _epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def state_dict(self) -> dict[str, int]:
        if self._delivered >= len(self):
            # Saved after the epoch's last batch: Lightning resumes with the next epoch, which
            # must start from its first batch.
            return {"epoch": self._epoch() + 1, "batches": 0}
        return {"epoch": self._epoch(), "batches": self._delivered}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(int(state["epoch"]))
        self._resume_batches = int(state["batches"])

    def __iter__(self) -> Iterator[Any]:
        skip, self._resume_batches = self._resume_batches, 0
        skip_in_sampler = isinstance(self.sampler, EpochSampler) and self.batch_size is not None
        if skip and skip_in_sampler:
            self.sampler.start = skip * self.batch_size
        iterator = super().__iter__()
        if skip and not skip_in_sampler:
            for _ in range(skip):
                next(iterator, None)
        self._delivered = skip
        for batch in iterator:
            self._delivered += 1
            yield batch
