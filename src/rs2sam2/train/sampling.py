"""What each training step sees: an epoch is one pass over the refs (objects), each drawing one of
its expressions, split over the ranks.

Every random choice of a sample (its expression, the RRSIS-D black boxes) comes from a generator
seeded with ``(seed, epoch, ref)``, so a sample depends neither on the worker nor on the rank, and
a resumed run sees the same samples as an uninterrupted one.

**Absent-object samples** (``train --negatives P``): a share P of the samples keep their ref's
image but take a sentence of another image and an empty target, so that the model learns to say
that a sentence describes nothing there (the presence loss, :func:`rs2sam2.losses.presence_loss`).
Which samples, and which sentence, come from a second generator seeded with ``(seed, epoch, ref,
1)``: at P = 0 nothing is drawn from it, and every sample is the published one. The sentence is one
of another image's, and never one that is also said of this image (the same words written for
another image: "the white tank"), so it does not describe an object that is there; for any dataset
(RRSIS-D, RefSegRS, RISBench, JSONL), whose sentences are about their own image.
"""

from __future__ import annotations

import os
import random
import signal
from typing import Any

import numpy as np
import torch

from ..data import DatasetError
from ..data.collate import list_collate
from ..data.transforms import SampleTransform
from ..errors import ConfigError


class _RefRange(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class RefSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, ref_index)`` for this rank: a ``DistributedSampler`` over ``refs`` (seeded
    shuffle per epoch, padded so that every rank gets the same count), optionally skipping the first
    ``skip`` items (resuming inside an epoch)."""

    def __init__(self, refs: list[int], rank: int, world_size: int, seed: int, shuffle: bool = True) -> None:
        self.refs = list(refs)
        self.inner = torch.utils.data.DistributedSampler(
            _RefRange(len(self.refs)), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = int(epoch)
        self.skip = int(skip)
        self.inner.set_epoch(self.epoch)

    def __iter__(self):
        for k, i in enumerate(self.inner):
            if k >= self.skip:
                yield (self.epoch, self.refs[int(i)])

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)

    @property
    def per_epoch(self) -> int:
        return len(self.inner)


class TrainSamples(torch.utils.data.Dataset):
    """``(epoch, ref)`` -> a transformed sample of one randomly chosen expression of that ref, or
    ``{"problem": message}`` when it cannot be loaded (a file unreadable or changed since the checks
    before step 1). The trainer stops the run with that message: raised here, the error would reach
    it wrapped in a DataLoader worker's traceback.

    ``negatives``: the share of absent-object samples (module docstring); a sample is absent with
    that probability, so the share over an epoch is ``negatives`` up to sampling noise."""

    def __init__(self, dataset, image_size: int, evf_size: int, seed: int, random_boxes: bool,
                 box_prob: float = 0.2, negatives: float = 0.0) -> None:
        self.dataset = dataset
        self.image_size, self.evf_size = image_size, evf_size
        self.seed, self.random_boxes, self.box_prob = int(seed), bool(random_boxes), float(box_prob)
        self.negatives = float(negatives)
        self.image_texts = _image_texts(dataset, absent=False) if self.negatives > 0 else {}
        self.image_absent = _image_texts(dataset, absent=True) if self.negatives > 0 else {}
        self.image_keys = {path: {_key(t) for t in texts} for path, texts in self.image_texts.items()}
        self.image_paths = list(self.image_texts)
        if self.negatives > 0 and len(self.image_texts) < 2:
            raise ConfigError(f"negatives {self.negatives:g} needs sentences of at least two images (an absent "
                              f"sample takes another image's sentence); the training split has "
                              f"{len(self.image_texts)} image")

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
        if self.negatives > 0:
            self._maybe_absent(sample, int(epoch), int(ref))
        return transform(sample)

    def _maybe_absent(self, sample: dict[str, Any], epoch: int, ref: int) -> None:
        """With probability ``negatives``, turn ``sample`` into an absent-object sample in place: one
        of the dataset's absent sentences of this image where it has some, else another image's
        sentence (not one said of this image); an empty target."""
        rng = np.random.default_rng([self.seed, epoch, ref, 1])
        if rng.random() >= self.negatives:
            return
        image = str(self.dataset.refs[ref].image_path)
        own = self.image_absent.get(image)
        if own:
            self._make_absent(sample, own[int(rng.integers(len(own)))])
            return
        for _ in range(20):  # a sentence of another image that is never said of this one
            other = self.image_paths[int(rng.integers(len(self.image_paths)))]
            texts = self.image_texts[other]
            text = texts[int(rng.integers(len(texts)))]
            if other != image and _key(text) not in self.image_keys[image]:
                break
        else:
            return  # every sentence tried is also said of this image: keep the real sample
        self._make_absent(sample, text)

    @staticmethod
    def _make_absent(sample: dict[str, Any], text: str) -> None:
        sample["text"] = text
        sample["mask"] = np.zeros_like(sample["mask"])
        sample["meta"] = {**sample["meta"], "absent": True}


def _key(text: str) -> str:
    """A sentence compared without case or spacing differences."""
    return " ".join(text.lower().split())


def _image_texts(dataset, absent: bool) -> dict[str, list[str]]:
    """Image path -> its sentences of objects (``absent`` False) or its absent sentences (True), in
    the dataset's order."""
    texts: dict[str, list[str]] = {}
    for ref_index, text, _ in dataset.expressions:
        ref = dataset.refs[ref_index]
        if ref.absent == absent:
            texts.setdefault(str(ref.image_path), []).append(text)
    return texts


def _worker_init(worker_id: int) -> None:  # global RNGs of workers: not used by the pipeline, seeded anyway
    seed = torch.initial_seed() % (2**32)
    np.random.seed(seed)
    random.seed(seed)
    signal.signal(signal.SIGTERM, _end_worker)


def _end_worker(signum, frame) -> None:
    """SIGTERM ends a loader worker at once with status 0. torchrun sends it to a rank's whole
    process group; a worker killed by it would make its rank, stopping on the same signal, raise
    "DataLoader worker ... is killed by signal" instead of ending quietly."""
    os._exit(0)


def train_loader(dataset, cfg, model_config, rank: int, world_size: int,
                 pin_memory: bool) -> tuple[RefSampler, torch.utils.data.DataLoader]:
    """This rank's sampler and the loader of lists of ``cfg.batch_size`` transformed samples."""
    sampler = RefSampler(dataset.object_refs, rank, world_size, cfg.seed)
    samples = TrainSamples(dataset, model_config.image_size, model_config.beit3.img_size, cfg.seed,
                           bool(cfg.random_boxes), cfg.box_prob, cfg.negatives)
    loader = torch.utils.data.DataLoader(
        samples, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers, collate_fn=list_collate,
        worker_init_fn=_worker_init, drop_last=False, pin_memory=pin_memory)
    return sampler, loader
