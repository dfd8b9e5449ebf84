"""`clickpose synth`: write a synthetic COCO keypoint dataset."""
from __future__ import annotations

import argparse
import time

from clickpose_core.synth.generator import SceneConfig, generate_dataset, parse_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (gets images/ and annotations.json)")
    parser.add_argument("--num-images", type=int, default=300, help="number of images (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; same seed -> identical files")
    parser.add_argument("--size", default="384x512", help="image WIDTHxHEIGHT in pixels (default 384x512)")
    parser.add_argument("--min-people", type=int, default=1)
    parser.add_argument("--max-people", type=int, default=6)
    parser.add_argument("--max-objects", type=int, default=3, help="occluding objects per image, at most")
    parser.add_argument("--format", choices=("png", "jpg"), default="png", help="image file format")
    parser.add_argument("--workers", type=int, default=1,
                        help="render in this many processes (same files as with one; default 1)")


def run(args: argparse.Namespace) -> int:
    width, height = parse_size(args.size)
    cfg = SceneConfig(min_people=args.min_people, max_people=args.max_people, max_objects=args.max_objects)
    start = time.perf_counter()
    coco = generate_dataset(args.out, args.num_images, seed=args.seed, width=width, height=height,
                            image_format=args.format, cfg=cfg, progress=True,
                            workers=args.workers)
    took = time.perf_counter() - start
    print(f"wrote {len(coco['images'])} images, {len(coco['annotations'])} persons to {args.out} "
          f"in {took:.1f}s")
    return 0
