"""``rs2sam2 synth``: its arguments, each range-checked before any work (:func:`rs2sam2.cliargs.number`),
and the run that prints the summary of :func:`~rs2sam2.data.synth.generate` as JSON."""

from __future__ import annotations

import argparse
import json
import sys

from ...cliargs import number
from .dataset import MAX_IMAGE_SIZE, generate
from .mosaic import MAX_MOSAIC_SIDE
from .scenes import MIN_IMAGE_SIZE
from .writers import DEFAULT_SPLITS, FORMATS

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``rs2sam2 synth``."""
    parser.add_argument("--format", required=True, choices=FORMATS, help="on-disk layout to write")
    parser.add_argument("--out", required=True, help="output folder (the dataset root)")
    parser.add_argument("--num-images", type=number(int, low=1, high=100_000), default=200)
    parser.add_argument("--seed", type=number(int, low=0), default=0)
    parser.add_argument("--image-size", type=number(int, low=MIN_IMAGE_SIZE, high=MAX_IMAGE_SIZE), default=256,
                        help="side of a scene in pixels (of each scene of a mosaic)")
    parser.add_argument("--splits", type=number(float, low=0), nargs=3, default=DEFAULT_SPLITS,
                        metavar=("TRAIN", "VAL", "TEST"), help="shares of the images per split")
    parser.add_argument("--all-targets", action="store_true",
                        help="write expressions for every describable object of a scene, not for 1-3 of them")
    parser.add_argument("--mosaic", type=number(int, low=2, high=MAX_MOSAIC_SIDE // MIN_IMAGE_SIZE), default=0,
                        metavar="K", help="write mosaics of K x K scenes with sentences about the whole mosaic "
                        f"(K * --image-size at most {MAX_MOSAIC_SIDE}); GeoTIFFs where the layout allows")
    parser.add_argument("--absent", type=number(int, low=0, high=10), default=None, metavar="N",
                        help="sentences per image that describe nothing in it, written with an empty mask "
                             "(default: 1 per mosaic, 0 per single scene)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a dataset already in --out (its images, masks and annotation files; other "
                             "files are kept); without it a non-empty --out is an error")


def run(args: argparse.Namespace) -> int:
    """Generate as ``args`` says and print the summary as JSON. A bad argument or output folder raises a
    user error (exit status 2, see :mod:`rs2sam2.cli`)."""
    summary = generate(args.format, args.out, args.num_images, args.seed, args.image_size, args.splits,
                       overwrite=args.overwrite, all_targets=args.all_targets, mosaic=args.mosaic,
                       absent=args.absent)
    if summary["kept"]:
        print(f"rs2sam2 synth: kept in {args.out} (not written by synth): {', '.join(summary['kept'])}",
              file=sys.stderr)
    print(json.dumps(summary, indent=2))
    return 0
