"""A tiny, untrained but deterministic ``nano`` checkpoint folder for the predictor / app tests.

The folder holds what ``rs2sam2 predict --checkpoint`` expects of a real one (``config.json``,
``model.safetensors``, ``tokenizer.model``); the SentencePiece vocabulary is trained on a few
generated expressions and ``beit3.vocab_size`` is set to the tokenizer's length, as the demo does.
Also writes small test images (a 16-bit 4-band GeoTIFF in EPSG:32633, an RGB PNG).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

EXPRESSIONS = [
    "the red building on the left",
    "the white storage tank at the top",
    "the large ship in the middle",
    "the small gray vehicle near the road",
    "the airplane on the right",
    "the blue house at the bottom left",
    "the larger oil tank",
    "the boat closest to the center",
    "the black car on the road",
    "the green tank next to the building",
]

# a UTM zone 33N grid with 0.5 m pixels, far from the origin (a typical aerial tile)
GEO_CRS = "EPSG:32633"
GEO_ORIGIN = (500_000.0, 5_200_000.0)
GEO_PIXEL = 0.5


def build_checkpoint(folder: str | Path, seed: int = 0) -> Path:
    """Write a ``save_pretrained`` folder with a nano model (seeded init) and its tokenizer."""
    import rs2sam2
    from rs2sam2.checkpoints import save_pretrained
    from rs2sam2.text import load_tokenizer, train_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spm_path = train_tokenizer(EXPRESSIONS * 3, folder / "_train" / "tok.model", vocab_size=64)
    tok = load_tokenizer(spm_path)
    base = rs2sam2.get_config("nano")
    cfg = rs2sam2.get_config("nano", beit3=dataclasses.replace(base.beit3, vocab_size=len(tok)))
    torch.manual_seed(seed)
    model = rs2sam2.build_model(cfg).eval()
    save_pretrained(model, folder, tokenizer_path=spm_path)
    return folder


def write_geotiff(path: str | Path, height: int = 200, width: int = 300, seed: int = 0) -> Path:
    """A 16-bit, 4-band GeoTIFF (EPSG:32633, 0.5 m pixels, offset origin) with a bright square."""
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(seed)
    data = rng.integers(200, 1200, size=(4, height, width), dtype=np.uint16)
    data[:, height // 4 : height // 2, width // 3 : width // 2] += 3000
    transform = Affine(GEO_PIXEL, 0.0, GEO_ORIGIN[0], 0.0, -GEO_PIXEL, GEO_ORIGIN[1])  # north-up
    with rasterio.open(
        path, "w", driver="GTiff", height=height, width=width, count=4, dtype="uint16",
        crs=GEO_CRS, transform=transform,
    ) as dst:
        dst.write(data)
    return Path(path)


def write_png(path: str | Path, height: int = 200, width: int = 300, seed: int = 1) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    img[40:120, 60:200] = (200, 40, 40)
    Image.fromarray(img).save(path)
    return Path(path)
