"""Evaluation datasets as streams of image records, and batching with counted skips.

Classification sources: an ImageFolder directory, a CSV of `path,label`, webdataset shards with
a `cls` key. Retrieval sources: JSONL `{"image", "captions"}` (or a folder holding
captions.jsonl), a COCO captions annotations JSON, webdataset shards whose json has "captions".
Shard specs follow the project contract: `DIR` (manifest.json; `DIR::val` picks the split,
default train), a brace pattern, a single .tar, `pipe:CMD`, or a list of these.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from PIL import Image
from tqdm import tqdm

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SHARD_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
DEFAULT_SPLIT = "train"  # the contract's default for a manifest dir without ::split
SOURCE_HELP = ("an ImageFolder dir, a .csv of path,label, webdataset shards (DIR with manifest.json"
               "[::split], a .tar, a {000000..000009} pattern, pipe:CMD)")
RETRIEVAL_HELP = ("a captions .jsonl (or a dir holding captions.jsonl), a COCO captions .json, "
                  "or webdataset shards (DIR with manifest.json[::split], .tar, brace pattern)")


@dataclass
class ImageRecord:
    """One image: a lazy loader plus its label (classification) or captions (retrieval)."""

    key: str
    load: Callable[[], Image.Image]
    label: int = -1
    captions: list[str] = field(default_factory=list)


@dataclass
class EvalDataset:
    """Records (possibly a lazy stream) and, for classification, the class names."""

    name: str
    records: Iterable[ImageRecord]
    classnames: list[str] | None = None


def open_file(path: Path) -> Callable[[], Image.Image]:
    return lambda: Image.open(path).convert("RGB")


def open_bytes(data: bytes) -> Callable[[], Image.Image]:
    return lambda: Image.open(io.BytesIO(data)).convert("RGB")


# ---------------------------------------------------------------- shards

def is_shard_spec(spec: str) -> bool:
    path = Path(spec.split("::")[0])
    return ("::" in spec or spec.endswith(".tar") or "{" in spec or spec.startswith("pipe:")
            or (path / "manifest.json").is_file())


def manifest_urls(folder: Path, split: str) -> list[str]:
    manifest = json.loads((folder / "manifest.json").read_text())
    urls = [str(folder / shard["file"]) for shard in manifest.get("shards", []) if shard.get("split") == split]
    if not urls:
        raise ValueError(f"{folder}/manifest.json: no shards with split {split!r}; use DIR::train or DIR::val")
    return urls


def expand_shards(spec: str | list[str], split: str | None = None) -> tuple[list[str], Path | None]:
    """Shard URLs for a spec, plus the manifest folder (where classnames.json lives) if any."""
    if isinstance(spec, list):
        expanded = [expand_shards(item, split) for item in spec]
        return [url for urls, _ in expanded for url in urls], next((f for _, f in expanded if f), None)
    if spec.startswith("pipe:"):
        return [spec], None
    base, _, spec_split = spec.partition("::")
    folder = Path(base)
    if (folder / "manifest.json").is_file():
        return manifest_urls(folder, spec_split or split or DEFAULT_SPLIT), folder
    if folder.is_dir():
        raise FileNotFoundError(f"{folder}: no manifest.json; point at the shard files or a folder written by data.build")
    from braceexpand import braceexpand

    urls = list(braceexpand(base))
    missing = [url for url in urls if not Path(url).is_file()]
    if missing:
        raise FileNotFoundError(f"shard not found: {missing[0]} (from {spec}); expected {SOURCE_HELP}")
    return urls, None


def shard_samples(urls: list[str]) -> Iterator[dict[str, Any]]:
    """Raw tar samples in shard order; decoding is left to the caller so failures are counted."""
    import webdataset as wds

    # No node/worker splitting: every rank that evaluates must see the whole set.
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False, nodesplitter=None, workersplitter=None)
    yield from dataset


def sample_image_bytes(sample: dict[str, Any]) -> bytes | None:
    return next((sample[key] for key in SHARD_IMAGE_KEYS if key in sample), None)


def sample_json(sample: dict[str, Any]) -> dict:
    raw = sample.get("json")
    return json.loads(raw) if raw else {}


# ---------------------------------------------------------------- classification

def read_shard_classnames(folder: Path | None) -> list[str] | None:
    if folder is None or not (folder / "classnames.json").is_file():
        return None
    return json.loads((folder / "classnames.json").read_text())


def shard_classification_records(urls: list[str], classnames: list[str], spec: str) -> Iterator[ImageRecord]:
    index = {name: i for i, name in enumerate(classnames)}
    for sample in shard_samples(urls):
        key = sample.get("__key__", "?")
        if "cls" in sample:
            label = int(sample["cls"].decode().strip())
            if not 0 <= label < len(classnames):
                raise ValueError(f"unknown class index {label} in {spec} sample {key}; "
                                 f"only {len(classnames)} class names are known")
        else:
            name = sample_json(sample).get("label")
            if name not in index:
                raise ValueError(f"unknown class {name!r} in {spec} sample {key}; "
                                 f"shards need a cls key or a json label from the class names")
            label = index[name]
        data = sample_image_bytes(sample)
        load = open_bytes(data) if data is not None else _missing_image(key)
        yield ImageRecord(key=key, load=load, label=label)


def _missing_image(key: str) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        raise OSError(f"sample {key} has no image")
    return load


def label_index(classnames: list[str], source: str) -> Callable[[str, str], int]:
    """Map a label (name, or integer index into classnames) to its index; unknown -> one-line error."""
    index = {name: i for i, name in enumerate(classnames)}

    def lookup(label: str, where: str) -> int:
        if label in index:
            return index[label]
        if label.isdigit() and int(label) < len(classnames):
            return int(label)
        raise ValueError(f"unknown class {label!r} in {where}; it is not among the {len(classnames)} "
                         f"class names from {source}")
    return lookup


def image_folder(folder: Path, classnames: list[str] | None) -> EvalDataset:
    class_dirs = sorted(path for path in folder.iterdir() if path.is_dir())
    if not class_dirs:
        raise ValueError(f"dataset {folder}: no class sub-folders; an ImageFolder needs <class>/<image> files")
    folder_names = [path.name for path in class_dirs]
    if classnames is None:
        classnames = folder_names
    overlap = set(folder_names) & set(classnames)
    # Folders named by id (e.g. ImageNet wnids) map to classnames by sorted order, as torchvision does.
    positional = not overlap and len(folder_names) == len(classnames)
    lookup = label_index(classnames, "--classnames")
    records = []
    for position, class_dir in enumerate(class_dirs):
        label = position if positional else lookup(class_dir.name, f"folder {class_dir}")
        for path in sorted(class_dir.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                records.append(ImageRecord(key=str(path.relative_to(folder)), load=open_file(path), label=label))
    return EvalDataset(name=str(folder), records=records, classnames=classnames)


def csv_dataset(path: Path, classnames: list[str] | None) -> EvalDataset:
    with path.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if rows and [cell.strip().lower() for cell in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    bad = next((i for i, row in enumerate(rows) if len(row) < 2), None)
    if bad is not None:
        raise ValueError(f"{path}: row {bad + 1} has {len(rows[bad])} column(s); expected path,label")
    if classnames is None:
        classnames = sorted({row[1].strip() for row in rows})
    lookup = label_index(classnames, "--classnames")
    records = [
        ImageRecord(key=row[0], load=open_file(path.parent / row[0].strip()),
                    label=lookup(row[1].strip(), f"{path} row {i + 1}"))
        for i, row in enumerate(rows)
    ]
    return EvalDataset(name=str(path), records=records, classnames=classnames)


def load_classification(spec: str | list[str], classnames: list[str] | None = None,
                        split: str | None = None) -> EvalDataset:
    """Open a labelled image source; class names come from `classnames` or the source itself."""
    if isinstance(spec, list) or is_shard_spec(spec):
        urls, folder = expand_shards(spec, split)
        found = read_shard_classnames(folder)
        if classnames is None and found is None:
            raise ValueError(f"dataset {spec}: no classnames.json beside the shards; pass --classnames")
        if classnames is not None and found is not None and len(classnames) != len(found):
            raise ValueError(f"--classnames has {len(classnames)} names but {folder}/classnames.json has "
                             f"{len(found)}; drop --classnames or fix the file")
        names = classnames or found
        return EvalDataset(name=str(spec), records=_Restartable(lambda: shard_classification_records(urls, names, str(spec))),
                           classnames=names)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {spec}; expected {SOURCE_HELP}")
    if path.is_dir():
        return image_folder(path, classnames)
    if path.suffix == ".csv":
        return csv_dataset(path, classnames)
    raise ValueError(f"dataset {spec}: unknown kind; expected {SOURCE_HELP}")


class _Restartable:
    """An iterable that calls its generator factory anew on every pass."""

    def __init__(self, factory: Callable[[], Iterator[ImageRecord]]) -> None:
        self.factory = factory

    def __iter__(self) -> Iterator[ImageRecord]:
        return self.factory()


# ---------------------------------------------------------------- retrieval

def jsonl_records(path: Path) -> list[ImageRecord]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        item = json.loads(line)
        if "image" not in item or not item.get("captions"):
            raise ValueError(f"{path} line {number}: needs \"image\" and a non-empty \"captions\" list")
        records.append(ImageRecord(key=item["image"], load=open_file(path.parent / item["image"]),
                                   captions=[str(caption) for caption in item["captions"]]))
    return records


def coco_records(path: Path, image_root: Path) -> list[ImageRecord]:
    annotations = json.loads(path.read_text())
    if not isinstance(annotations, dict) or "images" not in annotations or "annotations" not in annotations:
        raise ValueError(f"{path}: not a COCO captions file (needs \"images\" and \"annotations\")")
    captions: dict[Any, list[str]] = {}
    for annotation in annotations["annotations"]:
        captions.setdefault(annotation["image_id"], []).append(annotation["caption"].strip())
    return [
        ImageRecord(key=image["file_name"], load=open_file(image_root / image["file_name"]),
                    captions=captions[image["id"]])
        for image in annotations["images"] if image["id"] in captions
    ]


def shard_caption_records(urls: list[str]) -> Iterator[ImageRecord]:
    for sample in shard_samples(urls):
        key = sample.get("__key__", "?")
        meta = sample_json(sample)
        captions = meta.get("captions") or ([sample["txt"].decode()] if "txt" in sample else [])
        data = sample_image_bytes(sample)
        load = open_bytes(data) if data is not None else _missing_image(key)
        yield ImageRecord(key=key, load=load, captions=[str(caption) for caption in captions])


def load_retrieval(spec: str | list[str], split: str | None = None, image_root: str | None = None) -> EvalDataset:
    """Open an image-captions source (several captions per image)."""
    if isinstance(spec, list) or is_shard_spec(spec):
        urls, _ = expand_shards(spec, split)
        return EvalDataset(name=str(spec), records=_Restartable(lambda: shard_caption_records(urls)))
    path = Path(spec)
    if path.is_dir() and (path / "captions.jsonl").is_file():
        path = path / "captions.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {spec}; expected {RETRIEVAL_HELP}")
    if path.suffix == ".jsonl":
        return EvalDataset(name=str(spec), records=jsonl_records(path))
    if path.suffix == ".json":
        return EvalDataset(name=str(spec), records=coco_records(path, Path(image_root) if image_root else path.parent))
    raise ValueError(f"dataset {spec}: unknown kind; expected {RETRIEVAL_HELP}")


# ---------------------------------------------------------------- batching

class ImageBatches:
    """Preprocessed batches ([B, 3, H, W], records); unreadable images are skipped and counted.

    After iteration `seen` is the number of records read and `skipped` the unreadable ones.
    """

    def __init__(self, records: Iterable[ImageRecord], preprocess: Callable[[Image.Image], torch.Tensor],
                 batch_size: int, *, max_samples: int | None = None, desc: str = "images",
                 progress: bool = True) -> None:
        self.records = records
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.max_samples = max_samples
        self.desc = desc
        self.progress = progress
        self.seen = 0
        self.skipped = 0

    def _decoded(self) -> Iterator[tuple[torch.Tensor, ImageRecord]]:
        records = islice(self.records, self.max_samples) if self.max_samples else self.records
        total = len(self.records) if hasattr(self.records, "__len__") else None
        if total is not None and self.max_samples:
            total = min(total, self.max_samples)
        for record in tqdm(records, total=total, desc=self.desc, unit="img", disable=not self.progress):
            self.seen += 1
            try:
                image = self.preprocess(record.load())
            except (OSError, ValueError, SyntaxError):
                # PIL raises these for truncated/corrupt files; the count goes into the result.
                self.skipped += 1
                continue
            yield image, record

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[ImageRecord]]]:
        self.seen = self.skipped = 0
        images: list[torch.Tensor] = []
        records: list[ImageRecord] = []
        for image, record in self._decoded():
            images.append(image)
            records.append(record)
            if len(images) == self.batch_size:
                yield torch.stack(images), records
                images, records = [], []
        if images:
            yield torch.stack(images), records

    def check_nonempty(self, name: str) -> None:
        """Raise when nothing (readable) was found, so no metric is computed over zero samples."""
        if self.seen == 0:
            raise ValueError(f"dataset {name} is empty; check the path and split")
        if self.seen == self.skipped:
            raise ValueError(f"dataset {name}: all {self.seen} images were unreadable")
