"""Small writers shared by the eval tests (CSV subsets, shards)."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image


def cifar_subset_csv(shared_data: Path, out: Path, per_class: int = 20) -> Path:
    """A CSV of path,label with the first `per_class` images of each CIFAR-10 class."""
    root = shared_data / "cifar10-test-2k"
    rows = ["path,label"]
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for image in sorted(class_dir.glob("*.jpg"))[:per_class]:
            rows.append(f"{image},{class_dir.name}")
    out.write_text("\n".join(rows) + "\n")
    return out


def jpeg_bytes(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 36), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_shards(folder: Path, samples: list[dict], classnames: list[str]) -> Path:
    """Contract-shaped shards: one val tar of samples {key, colour, cls, captions} + manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    name = "demo-val-000000.tar"
    with tarfile.open(folder / name, "w") as tar:
        for sample in samples:
            files = {"jpg": sample["jpg"] if "jpg" in sample else jpeg_bytes(sample["colour"]),
                     "cls": str(sample["cls"]).encode(),
                     "txt": sample["captions"][0].encode(),
                     "json": json.dumps({"key": sample["key"], "captions": sample["captions"]}).encode()}
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{sample['key']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    manifest = {"format": 1, "prefix": "demo", "shards": [{"file": name, "split": "val", "count": len(samples)}],
                "totals": {"train": 0, "val": len(samples)}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "classnames.json").write_text(json.dumps(classnames))
    return folder


def run_one(encoder, task: str, data, *, batch_size: int = 64, workers: int = 0, **options) -> dict:
    """One task's record through the registry, as eval.run would produce it (no caching)."""
    from clip_pretrain.eval.run import run_task
    from clip_pretrain.eval.suite import COMMON_KEYS, TaskSpec
    from clip_pretrain.eval.tasks.context import TaskContext

    common = {key: options.pop(key) for key in list(options) if key in COMMON_KEYS}
    spec = TaskSpec(name=str(data), task=task, data=data, options=options, **common)
    return run_task(spec, TaskContext(encoder, batch_size=batch_size, workers=workers, progress=False))


def add_tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_benchmark_wds(folder: Path, splits: dict[str, list[dict]], *, classnames: list[str] | None = None,
                        templates: list[str] | None = None, per_shard: int = 4) -> Path:
    """CLIP_benchmark's layout: DIR/<split>/{0..N-1}.tar + nshards.txt, classnames.txt, templates.

    Each sample: {"image": bytes, "ext": "jpg"|"webp"|..., and "cls": int or "captions": [str]}.
    """
    for split, samples in splits.items():
        (folder / split).mkdir(parents=True, exist_ok=True)
        shards = [samples[i:i + per_shard] for i in range(0, len(samples), per_shard)] or [[]]
        for index, shard in enumerate(shards):
            with tarfile.open(folder / split / f"{index}.tar", "w") as tar:
                for number, sample in enumerate(shard):
                    key = f"s{index * per_shard + number:07d}"
                    add_tar_member(tar, f"{key}.{sample.get('ext', 'jpg')}", sample["image"])
                    if "cls" in sample:
                        add_tar_member(tar, f"{key}.cls", str(sample["cls"]).encode())
                    if "captions" in sample:
                        add_tar_member(tar, f"{key}.txt", "\n".join(sample["captions"]).encode())
        (folder / split / "nshards.txt").write_text(f"{len(shards)}\n")
    if classnames is not None:
        (folder / "classnames.txt").write_text("\n".join(classnames) + "\n")
    if templates is not None:
        (folder / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    return folder


def image_digest(image: Image.Image) -> str:
    import hashlib

    return hashlib.md5(image.convert("RGB").tobytes()).hexdigest()


class LookupEncoder:
    """A fake model that knows the answers: image -> one_hot(image_ids[pixels]), text -> one_hot(text_ids[text]).

    With the true ids it is a perfect model; permute the ids to get a shuffled (chance) one.
    Unknown images (e.g. lockstep padding) and texts embed to class 0.
    """

    def __init__(self, image_ids: dict[str, int], text_ids: dict[str, int], dim: int) -> None:
        self.image_ids, self.text_ids, self.dim = image_ids, text_ids, dim

    def preprocess(self, image: Image.Image):
        import torch

        return torch.tensor([self.image_ids.get(image_digest(image), 0)])

    def tokenizer(self, texts: list[str]):
        import torch

        return torch.tensor([[self.text_ids.get(text, 0)] for text in texts])

    def encode_image(self, images):
        import torch

        return torch.nn.functional.one_hot(images[:, 0].long(), self.dim).float()

    def encode_text(self, tokens):
        import torch

        return torch.nn.functional.one_hot(tokens[:, 0].long(), self.dim).float()
