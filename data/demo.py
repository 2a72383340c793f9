"""The embedded demo dataset: coloured shapes with varied captions, generated (never downloaded).

    python -m clip_pretrain.data.demo --output demo_out/shards [--num-train 6000 --num-val 600 --seed 0]

Each image is a 64 px picture of one shape in one colour, at a position and a size, on a grey
background. Its label "<colour> <shape>" is a zero-shot class (6 colours x 5 shapes = 30); the
captions name the class plus size/position words, so a tiny CLIP learns the task on CPU in minutes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm import tqdm

from clip_pretrain.common.cli import prog_name
from clip_pretrain.data.build import build_shards, split_of, write_json_atomic

IMAGE_SIZE = 64
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (35, 75, 225),
    "yellow": (245, 215, 20),
    "purple": (135, 45, 175),
    "orange": (250, 135, 10),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
BACKGROUNDS = {"white": 245, "light grey": 200, "grey": 150, "dark grey": 85}
POSITIONS = {
    "left": ((0.27, 0.5), ("on the left", "at the left side", "to the left")),
    "right": ((0.73, 0.5), ("on the right", "at the right side", "to the right")),
    "top": ((0.5, 0.27), ("near the top", "at the top", "in the upper part")),
    "bottom": ((0.5, 0.73), ("near the bottom", "at the bottom", "in the lower part")),
    "center": ((0.5, 0.5), ("in the center", "in the middle", "in the centre")),
}
SIZES = {"small": (0.11, 0.15), "large": (0.2, 0.25)}  # radius as a fraction of the image side
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
CAPTION_TEMPLATES = (
    "a {size} {colour} {shape} {where}.",
    "a photo of a {size} {colour} {shape} {where}.",
    "a {colour} {shape}.",
    "there is a {colour} {shape} {where}.",
    "a picture of a {size} {colour} {shape} on a {background} background.",
    "{where}, a {size} {colour} {shape}.",
    "a drawing of a {colour} {shape}, {size}, {where}.",
    "one {colour} {shape} on {background}.",
)
ZEROSHOT_TEMPLATES = ("a photo of a {c}.", "a {c}.", "a drawing of a {c}.", "a {c} on a plain background.")
CAPTIONS_PER_IMAGE = 2


def class_names() -> list[str]:
    """All demo classes, colour-major: index = cls in the shards."""
    return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]


def _regular_polygon(cx: float, cy: float, radius: float, corners: int, rotation: float) -> list[tuple[float, float]]:
    return [(cx + radius * math.cos(rotation + 2 * math.pi * i / corners),
             cy + radius * math.sin(rotation + 2 * math.pi * i / corners)) for i in range(corners)]


def _star(cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    points = []
    for i in range(10):  # alternate outer and inner vertices of a five-pointed star
        r = radius if i % 2 == 0 else radius * 0.45
        angle = -math.pi / 2 + math.pi * i / 5
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float,
               fill: tuple[int, int, int]) -> None:
    """Draw one filled shape centred at (cx, cy) whose extent is about ``radius``."""
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    elif shape == "square":
        half = radius * 0.85  # same visual area as the circle, roughly
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif shape == "triangle":
        draw.polygon(_regular_polygon(cx, cy + radius * 0.15, radius * 1.1, 3, -math.pi / 2), fill=fill)
    elif shape == "star":
        draw.polygon(_star(cx, cy, radius * 1.15), fill=fill)
    elif shape == "cross":
        arm = radius * 0.33
        draw.rectangle((cx - radius, cy - arm, cx + radius, cy + arm), fill=fill)
        draw.rectangle((cx - arm, cy - radius, cx + arm, cy + radius), fill=fill)
    else:
        raise ValueError(f"shape: unknown shape '{shape}'; use one of {', '.join(SHAPES)}")


def _jitter(rng: random.Random, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def make_sample(rng: random.Random) -> tuple[Image.Image, list[str], str]:
    """One random demo image [64, 64, RGB] with its captions and class label."""
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    background_name, background = rng.choice(list(BACKGROUNDS.items()))
    position = rng.choice(list(POSITIONS))
    size = rng.choice(list(SIZES))
    (fx, fy), where_phrases = POSITIONS[position]
    radius = rng.uniform(*SIZES[size]) * IMAGE_SIZE
    cx = fx * IMAGE_SIZE + rng.uniform(-3, 3)
    cy = fy * IMAGE_SIZE + rng.uniform(-3, 3)
    grey = min(255, max(0, background + rng.randint(-12, 12)))  # one offset for all channels: no tint
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (grey, grey, grey))
    draw_shape(ImageDraw.Draw(image), shape, cx, cy, radius, _jitter(rng, COLOURS[colour], 15))
    captions = []
    for template in rng.sample(CAPTION_TEMPLATES, CAPTIONS_PER_IMAGE):
        text = template.format(size=rng.choice(SIZE_WORDS[size]), colour=colour, shape=shape,
                               where=rng.choice(where_phrases), background=background_name)
        captions.append(text[0].upper() + text[1:] if rng.random() < 0.5 else text)
    return image, captions, f"{colour} {shape}"


def demo_keys(num_train: int, num_val: int) -> list[str]:
    """Keys whose hash split gives exactly ``num_train`` train and ``num_val`` val samples."""
    val_fraction = num_val / (num_train + num_val)
    wanted = {"train": num_train, "val": num_val}
    keys, index = [], 0
    while wanted["train"] or wanted["val"]:
        key = f"demo_{index:06d}"
        split = split_of(key, val_fraction)
        if wanted[split]:
            wanted[split] -= 1
            keys.append(key)
        index += 1
    return keys


def write_source(folder: str, keys: list[str], seed: int, progress: bool = True) -> str:
    """Draw every image into ``folder/images`` and write ``folder/captions.jsonl``; returns its path."""
    image_dir = Path(folder) / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    captions_path = Path(folder) / "captions.jsonl"
    with open(captions_path, "w", encoding="utf-8") as handle:
        for key in tqdm(keys, desc="draw demo", unit="img", disable=not progress):
            # one generator per key: a sample does not depend on how many others were drawn
            image, captions, label = make_sample(random.Random(f"{seed}:{key}"))
            image.save(image_dir / f"{key}.png", compress_level=1)
            record = {"key": key, "image": f"images/{key}.png", "captions": captions, "label": label}
            handle.write(json.dumps(record) + "\n")
    return str(captions_path)


def generate_demo(output: str, num_train: int = 6000, num_val: int = 600, seed: int = 0,
                  shard_size: int = 500, workers: int = 1, progress: bool = True) -> dict:
    """Generate the demo dataset and shard it into ``output``; returns the build stats."""
    if num_train < 1 or num_val < 0:
        raise ValueError(f"num_train/num_val: need num_train >= 1 and num_val >= 0, got {num_train}/{num_val}")
    keys = demo_keys(num_train, num_val)
    os.makedirs(output, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="demo_source_") as source:
        captions_path = write_source(source, keys, seed, progress)
        stats = build_shards(
            [captions_path], output, prefix="demo", shard_size=shard_size, max_side=IMAGE_SIZE,
            min_side=16, jpeg_quality=95, val_fraction=num_val / (num_train + num_val), workers=workers,
            key_column="key", label_column="label", classnames=class_names(), progress=progress,
        )
    write_json_atomic(os.path.join(output, "zeroshot_templates.json"), list(ZEROSHOT_TEMPLATES))
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog_name("clip_pretrain.data.demo"), description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="output shard directory")
    parser.add_argument("--num-train", type=int, default=6000)
    parser.add_argument("--num-val", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--workers", type=int, default=1, help="image worker processes for sharding")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        stats = generate_demo(args.output, args.num_train, args.num_val, args.seed, args.shard_size,
                              args.workers, not args.no_progress)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"demo: {stats['totals']['train']} train / {stats['totals']['val']} val samples in "
          f"{stats['shards']} shards, {len(class_names())} classes -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
