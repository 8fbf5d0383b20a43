"""Loaded sample (numpy) -> model inputs (tensors).

The published pipeline resizes the PIL image straight to a square (1024x1024 for SAM2, 224x224 for
BEiT-3; no aspect-ratio preservation, no padding) with bilinear interpolation, the mask with
nearest, and normalises with the ImageNet mean/std. :class:`SampleTransform` does exactly that with
PIL (PIL's bilinear filter is what the published torchvision-on-PIL resize calls).

There are deliberately **no flips or rotations**: the sentences say "left", "right", "top",
"bottom", and flipping the image would silently make them false.

The only published augmentation is on RRSIS-D training: black 32x32 boxes pasted on the image
(:func:`add_random_boxes`). The published code picks a fixed 20% of the refs once, when the dataset
is built; here each sample is hit with probability ``box_prob`` (0.2) every time it is drawn, which
gives the same share of augmented samples per epoch without freezing which ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SampleTransform", "add_random_boxes", "image_to_tensor",
           "resize_mask"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_to_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """HxWx3 uint8 -> float32 (3, size, size): bilinear resize, scale to 0..1, ImageNet-normalise."""
    pil = Image.fromarray(np.ascontiguousarray(image))
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.BILINEAR)
    t = torch.from_numpy(np.array(pil, dtype=np.float32)).permute(2, 0, 1).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return t.sub_(mean).div_(std)


def resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """HxW bool/0-1 -> float32 (size, size) of 0/1 values, nearest-neighbour."""
    pil = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8))
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.NEAREST)
    return torch.from_numpy(np.array(pil, dtype=np.float32))


def add_random_boxes(image: np.ndarray, rng: np.random.Generator, min_num: int = 20, max_num: int = 60,
                     size: int = 32, return_boxes: bool = False):
    """Paste ``min_num..max_num`` (inclusive) black ``size`` x ``size`` boxes at uniform random places.

    Works on a copy of the HxWx3 image (at its original resolution, before any resize). Boxes may
    overlap each other and the target object -- that is the point: the model must cope with
    occlusion. Returns the new image, and with ``return_boxes`` also the ``(x, y, w, h)`` boxes.
    """
    out = np.array(image, copy=True)
    height, width = out.shape[:2]
    bh, bw = min(size, height), min(size, width)
    count = int(rng.integers(min_num, max_num + 1))
    boxes = []
    for _ in range(count):
        y = int(rng.integers(0, height - bh + 1))
        x = int(rng.integers(0, width - bw + 1))
        out[y:y + bh, x:x + bw] = 0
        boxes.append((x, y, bw, bh))
    return (out, boxes) if return_boxes else out


class SampleTransform:
    """Turn ``ds.load(i)`` output into tensors.

    Output keys: ``image`` float32 (3, image_size, image_size) and ``image_evf`` float32
    (3, evf_size, evf_size), both ImageNet-normalised; ``mask`` float32 (image_size, image_size)
    of 0/1; ``text``, ``expression_id``, ``meta`` passed through. With ``keep_original_mask`` the
    full-resolution bool mask is kept as ``mask_orig`` (for evaluation at the original size).

    ``random_boxes`` only acts when ``train`` is true. ``rng`` is a numpy Generator or an int seed
    (deterministic); ``None`` draws fresh OS entropy on every call, which stays independent across
    DataLoader worker processes (a seeded Generator is copied into every forked worker, so each
    worker would paste the same boxes -- give each worker its own seed if you need determinism).
    """

    def __init__(self, image_size: int, evf_size: int, train: bool = False, random_boxes: bool = False,
                 rng: np.random.Generator | int | None = None, box_prob: float = 0.2,
                 keep_original_mask: bool = False) -> None:
        self.image_size = int(image_size)
        self.evf_size = int(evf_size)
        self.train = train
        self.random_boxes = random_boxes
        self.box_prob = box_prob
        self.keep_original_mask = keep_original_mask
        self.rng = np.random.default_rng(rng) if isinstance(rng, (int, np.integer)) else rng

    def _generator(self) -> np.random.Generator:
        return self.rng if self.rng is not None else np.random.default_rng()

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image = sample["image"]
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
        if self.train and self.random_boxes:
            rng = self._generator()
            if rng.random() < self.box_prob:
                image = add_random_boxes(image, rng)
        out = {
            "image": image_to_tensor(image, self.image_size),
            "image_evf": image_to_tensor(image, self.evf_size),
            "mask": resize_mask(sample["mask"], self.image_size),
            "text": sample["text"],
            "expression_id": sample["expression_id"],
            "meta": sample.get("meta", {}),
        }
        if self.keep_original_mask:
            out["mask_orig"] = torch.from_numpy(np.asarray(sample["mask"], dtype=bool).copy())
        return out

    def __repr__(self) -> str:
        return (f"SampleTransform(image_size={self.image_size}, evf_size={self.evf_size}, "
                f"train={self.train}, random_boxes={self.random_boxes})")
