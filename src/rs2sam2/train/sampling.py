"""What each training step sees: an epoch is one pass over the refs (objects), each drawing one of
its expressions, split over the ranks.

Every random choice of a sample (its expression, the RRSIS-D black boxes) comes from a generator
seeded with ``(seed, epoch, ref)``, so a sample depends neither on the worker nor on the rank, and
a resumed run sees the same samples as an uninterrupted one.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from ..data import DatasetError
from ..data.collate import list_collate
from ..data.transforms import SampleTransform


class _RefRange(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class RefSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, ref_index)`` for this rank: a ``DistributedSampler`` over the refs (seeded
    shuffle per epoch, padded so that every rank gets the same count), optionally skipping the first
    ``skip`` items (resuming inside an epoch)."""

    def __init__(self, num_refs: int, rank: int, world_size: int, seed: int, shuffle: bool = True) -> None:
        self.inner = torch.utils.data.DistributedSampler(
            _RefRange(num_refs), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = int(epoch)
        self.skip = int(skip)
        self.inner.set_epoch(self.epoch)

    def __iter__(self):
        for k, ref in enumerate(self.inner):
            if k >= self.skip:
                yield (self.epoch, int(ref))

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)

    @property
    def per_epoch(self) -> int:
        return len(self.inner)


class TrainSamples(torch.utils.data.Dataset):
    """``(epoch, ref)`` -> a transformed sample of one randomly chosen expression of that ref, or
    ``{"problem": message}`` when it cannot be loaded (a file unreadable or changed since the checks
    before step 1). The trainer stops the run with that message: raised here, the error would reach
    it wrapped in a DataLoader worker's traceback."""

    def __init__(self, dataset, image_size: int, evf_size: int, seed: int, random_boxes: bool,
                 box_prob: float = 0.2) -> None:
        self.dataset = dataset
        self.image_size, self.evf_size = image_size, evf_size
        self.seed, self.random_boxes, self.box_prob = int(seed), bool(random_boxes), float(box_prob)

    def __len__(self) -> int:
        return self.dataset.num_refs

    def __getitem__(self, key) -> dict[str, Any]:
        epoch, ref = key
        rng = np.random.default_rng([self.seed, int(epoch), int(ref)])
        expressions = self.dataset.ref_expressions(ref)
        index = expressions[int(rng.integers(len(expressions)))]
        transform = SampleTransform(self.image_size, self.evf_size, train=True, random_boxes=self.random_boxes,
                                    rng=rng, box_prob=self.box_prob)
        try:
            sample = self.dataset.load(index)
        except (DatasetError, OSError) as exc:  # the messages name the file
            return {"problem": str(exc)}
        return transform(sample)


def _worker_init(worker_id: int) -> None:  # global RNGs of workers: not used by the pipeline, seeded anyway
    seed = torch.initial_seed() % (2**32)
    np.random.seed(seed)
    random.seed(seed)


def train_loader(dataset, cfg, model_config, rank: int, world_size: int,
                 pin_memory: bool) -> tuple[RefSampler, torch.utils.data.DataLoader]:
    """This rank's sampler and the loader of lists of ``cfg.batch_size`` transformed samples."""
    sampler = RefSampler(dataset.num_refs, rank, world_size, cfg.seed)
    samples = TrainSamples(dataset, model_config.image_size, model_config.beit3.img_size, cfg.seed,
                           bool(cfg.random_boxes), cfg.box_prob)
    loader = torch.utils.data.DataLoader(
        samples, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers, collate_fn=list_collate,
        worker_init_fn=_worker_init, drop_last=False, pin_memory=pin_memory)
    return sampler, loader
