"""Evaluation datasets as streams of image records (decoding happens later, in eval.features).

Classification sources: an ImageFolder directory, a CSV of `path,label`, webdataset shards with
a `cls` key (ours, or CLIP_benchmark's layout, see eval.benchmark_wds). Retrieval sources: JSONL
`{"image", "captions"}` (or a folder holding captions.jsonl), a COCO-API captions JSON (MSCOCO
Karpathy 5k test `coco_test_karpathy.json`, `captions_val2017.json`), a Flickr30k Karpathy
`.txt` (header, then `<image>.jpg,<caption>` lines), webdataset shards whose json has "captions"
or whose txt holds one caption per line. Shard specs are data.specs's, as in training: `DIR`
(manifest.json; `DIR::val` picks the split), an img2dataset output folder, a brace pattern, a
single .tar, `pipe:CMD`, or a list. A directory with several splits and none named evaluates val
(CLIP_benchmark layout: test) and says so in `EvalDataset.split_note`. Images decode through
data.decode (the loader's and builder's decoder, with the same decompression-bomb limit).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from PIL import Image

from clip_pretrain.data import specs
from clip_pretrain.data.decode import decode_image
from clip_pretrain.eval import benchmark_wds

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SHARD_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
SOURCE_HELP = ("an ImageFolder dir, a .csv of path,label, webdataset shards (DIR with manifest.json"
               "[::split], an img2dataset folder, a .tar, a {000000..000009} pattern, pipe:CMD)")
RETRIEVAL_HELP = ("a captions .jsonl (or a dir holding captions.jsonl), a COCO captions .json, a Flickr30k "
                  "Karpathy .txt, or webdataset shards (DIR with manifest.json or <split>/nshards.txt, an "
                  "img2dataset folder, .tar, brace pattern)")


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
    split: str | None = None  # the split read, for sources that have splits
    split_note: str = ""  # set when the split was chosen by default, for the output
    templates: list[str] | None = None  # zero-shot templates shipped with the data (CLIP_benchmark layout)
    cache_key: tuple = ()  # identifies the records for the feature cache (default: name, split, classnames)

    def __post_init__(self) -> None:
        self.cache_key = self.cache_key or ("records", self.name, self.split, tuple(self.classnames or ()))
        repeated = sorted({name for name in self.classnames or () if self.classnames.count(name) > 1})
        if repeated:  # two identical classifier rows: argmax and the label lookup would disagree silently
            raise ValueError(f"{self.name}: class name {repeated[0]!r} appears more than once among its "
                             f"{len(self.classnames)} class names; make each class name unique")


def open_file(path: Path) -> Callable[[], Image.Image]:
    return lambda: decode_image(path.read_bytes())


def open_bytes(data: bytes) -> Callable[[], Image.Image]:
    return lambda: decode_image(data)


# ---------------------------------------------------------------- shards

def is_shard_spec(spec: str) -> bool:
    return specs.looks_like_spec(spec) or benchmark_wds.is_layout(Path(spec))


@dataclass
class ShardSource:
    urls: list[str]
    folder: Path | None = None  # where classnames live, if known
    split: str | None = None
    split_note: str = ""


def expand_shards(spec: str | list[str], split: str | None = None) -> ShardSource:
    """Shard URLs for a spec, plus the folder (class names), split read and default-split note."""
    if isinstance(spec, list):
        parts = [expand_shards(item, split) for item in spec]
        first = next((part for part in parts if part.folder), parts[0])
        notes = "; ".join(part.split_note for part in parts if part.split_note)
        return ShardSource([url for part in parts for url in part.urls], first.folder, first.split, notes)
    base, spec_split = specs.split_suffix(spec)
    if spec_split and split and spec_split != split:
        raise ValueError(f"dataset {spec}: names split {spec_split!r} but --split/split says {split!r}; keep one")
    folder = Path(base)
    if benchmark_wds.is_layout(folder) and not (folder / specs.MANIFEST).is_file():
        chosen, note = specs.pick_split(benchmark_wds.splits(folder), spec_split or split, str(folder))
        return ShardSource(benchmark_wds.urls(folder, chosen), folder, chosen, note)
    resolved = specs.resolve(spec, split)
    return ShardSource([shard.url for shard in resolved.shards], resolved.folder, resolved.split, resolved.note)


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
    if folder is None:
        return None
    if (folder / "classnames.json").is_file():
        return json.loads((folder / "classnames.json").read_text())
    return benchmark_wds.classnames(folder)


def shard_records(urls: list[str], classnames: list[str] | None, spec: str, *,
                  need_labels: bool) -> Iterator[ImageRecord]:
    """Every sample with its label (cls index or json "label" among `classnames`; -1 when unknown)
    and its captions (json "captions", else one per txt line). The same records serve zero-shot,
    probe and retrieval tasks, so their features are shared; `need_labels` makes an unknown class
    a one-line error instead of -1."""
    index = {name: i for i, name in enumerate(classnames or [])}
    for sample in shard_samples(urls):
        key = sample.get("__key__", "?")
        meta = sample_json(sample)
        label, problem = sample_label(sample, meta, classnames, index)
        if need_labels and problem:
            raise ValueError(f"{problem} in {spec} sample {key}; shards need a cls key or a json label "
                             f"from the {len(index)} class names")
        # Our shards keep every caption in json["captions"]; CLIP_benchmark's put one per txt line.
        captions = meta.get("captions") or (sample["txt"].decode().splitlines() if "txt" in sample else [])
        data = sample_image_bytes(sample)
        load = open_bytes(data) if data is not None else _missing_image(key)
        yield ImageRecord(key=key, load=load, label=label,
                          captions=[str(c).strip() for c in captions if str(c).strip()])


def sample_label(sample: dict[str, Any], meta: dict, classnames: list[str] | None,
                 index: dict[str, int]) -> tuple[int, str]:
    """(label, "") or (-1, what is wrong)."""
    if "cls" in sample:
        label = int(sample["cls"].decode().strip())
        if classnames is not None and 0 <= label < len(classnames):
            return label, ""
        return -1, f"unknown class index {label}"
    name = meta.get("label")
    if name in index:
        return index[name], ""
    return -1, f"unknown class {name!r}"


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
        source = expand_shards(spec, split)
        found = read_shard_classnames(source.folder)
        if classnames is None and found is None:
            raise ValueError(f"dataset {spec}: no classnames.json or classnames.txt beside the shards; pass --classnames")
        if classnames is not None and found is not None and len(classnames) != len(found):
            raise ValueError(f"--classnames has {len(classnames)} names but {source.folder} has "
                             f"{len(found)}; drop --classnames or fix the file")
        names = classnames or found
        records = _Restartable(lambda: shard_records(source.urls, names, str(spec), need_labels=True))
        return EvalDataset(name=str(spec), records=records, classnames=names, split=source.split,
                           split_note=source.split_note, templates=benchmark_wds.templates(source.folder),
                           cache_key=("shards", tuple(source.urls), tuple(names)))
    if split is not None:
        raise ValueError(f"dataset {spec}: has no splits (split {split!r} given); drop split/--split "
                         f"or point at shards")
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
    """COCO-API captions JSON: every caption of every image (25,010 for the Karpathy 5k test)."""
    annotations = json.loads(path.read_text())
    if not isinstance(annotations, dict) or "images" not in annotations or "annotations" not in annotations:
        raise ValueError(f"{path}: not a COCO captions file (needs \"images\" and \"annotations\")")
    captions: dict[Any, list[str]] = {}
    for number, annotation in enumerate(annotations["annotations"]):
        if not (isinstance(annotation, dict) and "image_id" in annotation and isinstance(annotation.get("caption"), str)):
            raise ValueError(f"{path}: annotation #{number} has no \"image_id\" and string \"caption\" "
                             f"({str(annotation)[:80]}); fix or remove it")
        captions.setdefault(annotation["image_id"], []).append(annotation["caption"].strip())
    return [
        ImageRecord(key=image["file_name"], load=open_file(image_root / image["file_name"]),
                    captions=captions[image["id"]])
        for image in annotations["images"] if image["id"] in captions
    ]


def flickr_records(path: Path, image_root: Path) -> list[ImageRecord]:
    """Flickr30k Karpathy .txt as CLIP_benchmark reads it: skip the header, split each line on `.jpg,`."""
    captions: dict[str, list[str]] = {}
    lines = path.read_text().splitlines()[1:]
    for number, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        image, separator, caption = line.strip().partition(".jpg,")
        if not separator or not caption.strip():
            raise ValueError(f"{path} line {number}: expected <image>.jpg,<caption>, got {line[:60]!r}")
        captions.setdefault(image + ".jpg", []).append(caption)
    return [ImageRecord(key=name, load=open_file(image_root / name), captions=texts)
            for name, texts in captions.items()]


def check_image_root(records: list[ImageRecord], image_root: Path, spec: str) -> None:
    """A wrong image root would make every image unreadable; say so up front instead."""
    if records and not (image_root / records[0].key).is_file():
        raise FileNotFoundError(f"image not found: {image_root / records[0].key} (first image of {spec}); "
                                f"pass --image-root / image_root: the folder the file names are relative to")


def load_retrieval(spec: str | list[str], split: str | None = None, image_root: str | None = None) -> EvalDataset:
    """Open an image-captions source (several captions per image)."""
    if isinstance(spec, list) or is_shard_spec(spec):
        source = expand_shards(spec, split)
        # Labels too, when class names sit beside the shards: a zero-shot task then reuses these features.
        names = read_shard_classnames(source.folder)
        records = _Restartable(lambda: shard_records(source.urls, names, str(spec), need_labels=False))
        return EvalDataset(name=str(spec), records=records, split=source.split, split_note=source.split_note,
                           cache_key=("shards", tuple(source.urls), tuple(names) if names else None))
    if split is not None:
        raise ValueError(f"dataset {spec}: has no splits (split {split!r} given); drop split/--split "
                         f"or point at shards")
    path = Path(spec)
    if path.is_dir() and (path / "captions.jsonl").is_file():
        path = path / "captions.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {spec}; expected {RETRIEVAL_HELP}")
    root = Path(image_root) if image_root else path.parent
    if path.suffix == ".jsonl":
        return EvalDataset(name=str(spec), records=jsonl_records(path))
    readers = {".json": coco_records, ".txt": flickr_records}
    if path.suffix not in readers:
        raise ValueError(f"dataset {spec}: unknown kind; expected {RETRIEVAL_HELP}")
    records = readers[path.suffix](path, root)
    check_image_root(records, root, spec)
    return EvalDataset(name=str(spec), records=records, cache_key=("records", str(spec), str(root)))
