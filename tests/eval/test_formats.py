"""Standard retrieval files and CLIP_benchmark's webdataset layout, built small from ../shared/data.

Each test writes a tiny file in the real format, checks the parsed counts, and scores a perfect
model (1.0) and a shuffled one (about chance) through the same path eval.run uses.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from clip_pretrain.eval.datasets import load_classification, load_retrieval
from tests.eval.helpers import LookupEncoder, image_digest, run_one, write_benchmark_wds

pytestmark = pytest.mark.shared_data
NUM_IMAGES = 30
CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def coco_items(shared_data: Path, count: int = NUM_IMAGES) -> list[dict]:
    lines = (shared_data / "coco-mini" / "captions.jsonl").read_text().splitlines()[:count]
    return [json.loads(line) for line in lines]


def retrieval_encoder(shared_data: Path, items: list[dict], shuffle: bool = False) -> LookupEncoder:
    image_ids = {image_digest(Image.open(shared_data / "coco-mini" / item["image"])): i for i, item in enumerate(items)}
    owner = list(range(len(items)))
    if shuffle:  # every caption points at another image: a model that learned nothing useful
        owner = owner[1:] + owner[:1]
    text_ids = {caption.strip(): owner[i] for i, item in enumerate(items) for caption in item["captions"]}
    return LookupEncoder(image_ids, text_ids, len(items))


def assert_perfect_and_shuffled(shared_data: Path, items: list[dict], **task) -> dict:
    perfect = run_one(retrieval_encoder(shared_data, items), "zeroshot_retrieval", **task)
    assert all(value == 1.0 for value in perfect["metrics"].values()), perfect["metrics"]
    shuffled = run_one(retrieval_encoder(shared_data, items, shuffle=True), "zeroshot_retrieval", **task)
    # Each query's positives sit at rank 2+ among N images / 5N captions: R@1 = 0, R@10 well below 1.
    assert shuffled["metrics"]["image_retrieval_recall@1"] == 0.0
    assert shuffled["metrics"]["text_retrieval_recall@1"] == 0.0
    return perfect


def test_mscoco_karpathy_json_uses_every_caption(shared_data: Path, tmp_path: Path) -> None:
    items = coco_items(shared_data)
    images = [{"id": 7000 + i, "file_name": item["image"]} for i, item in enumerate(items)]
    annotations = [{"id": len(items) * i + j, "image_id": 7000 + i, "caption": caption}
                   for i, item in enumerate(items) for j, caption in enumerate(item["captions"])]
    # Real Karpathy files have images with 6 or 7 captions (25,010 for 5,000 images): all are kept.
    annotations.append({"id": 99999, "image_id": 7000, "caption": items[0]["captions"][0] + " "})
    images.append({"id": 1, "file_name": "images/never-captioned.jpg"})  # no caption: not an image of the set
    path = tmp_path / "coco_test_karpathy.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "info": {}, "licenses": []}))
    dataset = load_retrieval(str(path), image_root=str(shared_data / "coco-mini"))
    assert len(dataset.records) == NUM_IMAGES
    assert sum(len(record.captions) for record in dataset.records) == 5 * NUM_IMAGES + 1
    record = assert_perfect_and_shuffled(shared_data, items, data=str(path),
                                         image_root=str(shared_data / "coco-mini"))
    assert record["num_samples"] == NUM_IMAGES and record["num_captions"] == 5 * NUM_IMAGES + 1
    with pytest.raises(FileNotFoundError, match=r"image not found: .*000000000790.jpg .*pass --image-root"):
        load_retrieval(str(path), image_root=str(tmp_path))


def test_flickr30k_karpathy_txt_splits_on_dot_jpg_comma(shared_data: Path, tmp_path: Path) -> None:
    items = coco_items(shared_data)
    lines = ["image,caption"]  # CLIP_benchmark skips this header line
    for item in items:
        lines += [f"{Path(item['image']).name},{caption}" for caption in item["captions"]]
    lines.append("")  # trailing blank line
    path = tmp_path / "flickr30k_test_karpathy.txt"
    path.write_text("\n".join(lines))
    dataset = load_retrieval(str(path), image_root=str(shared_data / "coco-mini" / "images"))
    assert [len(record.captions) for record in dataset.records] == [5] * NUM_IMAGES
    assert any("," in caption for record in dataset.records for caption in record.captions)  # commas kept
    assert dataset.records[0].captions == [caption.strip() for caption in items[0]["captions"]]
    assert_perfect_and_shuffled(shared_data, items, data=str(path), image_root=str(shared_data / "coco-mini" / "images"))
    path.write_text("image,caption\n000000000790.png,a caption\n")
    with pytest.raises(ValueError, match=r"line 2: expected <image>.jpg,<caption>"):
        load_retrieval(str(path))


def test_clip_benchmark_wds_retrieval_multiline_txt(shared_data: Path, tmp_path: Path) -> None:
    items = coco_items(shared_data)
    samples = [{"image": (shared_data / "coco-mini" / item["image"]).read_bytes(), "captions": item["captions"]}
               for item in items]
    folder = write_benchmark_wds(tmp_path / "wds_mscoco", {"test": samples}, per_shard=7)
    (folder / "dataset_type.txt").write_text("retrieval\n")
    assert (folder / "test" / "nshards.txt").read_text() == "5\n"
    record = assert_perfect_and_shuffled(shared_data, items, data=str(folder))
    assert record["num_samples"] == NUM_IMAGES and record["num_captions"] == 5 * NUM_IMAGES
    assert record["split"] == "test"


def cifar_samples(shared_data: Path, per_class: int, offset: int = 0, ext: str = "jpg") -> list[dict]:
    samples = []
    for label, name in enumerate(CIFAR):
        for path in sorted((shared_data / "cifar10-test-2k" / name).glob("*.jpg"))[offset:offset + per_class]:
            samples.append({"image": path.read_bytes(), "cls": label, "ext": ext, "path": path})
    return samples


def classification_encoder(samples: list[dict], shuffle: bool = False) -> LookupEncoder:
    image_ids = {image_digest(Image.open(sample["path"])): sample["cls"] for sample in samples}
    if shuffle:
        image_ids = {digest: (label + 1) % len(CIFAR) for digest, label in image_ids.items()}
    templates = ["a photo of a {c}.", "a blurry photo of a {c}."]
    text_ids = {template.format(c=name): label for label, name in enumerate(CIFAR) for template in templates}
    return LookupEncoder(image_ids, text_ids, len(CIFAR))


def test_clip_benchmark_wds_classification_defaults_to_test_split(shared_data: Path, tmp_path: Path) -> None:
    train, test = cifar_samples(shared_data, 3), cifar_samples(shared_data, 2, offset=3)
    folder = write_benchmark_wds(tmp_path / "wds_cifar10", {"train": train, "test": test}, classnames=CIFAR,
                                 templates=["a photo of a {c}.", "a blurry photo of a {c}."], per_shard=6)
    dataset = load_classification(str(folder))
    assert dataset.split == "test" and "has splits test, train and none was named: evaluating 'test'" in dataset.split_note
    assert dataset.classnames == CIFAR and dataset.templates == ["a photo of a {c}.", "a blurry photo of a {c}."]
    assert [record.label for record in dataset.records] == [label for label in range(10) for _ in range(2)]
    assert len(list(load_classification(f"{folder}::train").records)) == 30
    # The templates come from the folder: the lookup encoder only knows those two prompts per class.
    perfect = run_one(classification_encoder(train + test), "zeroshot_classification", str(folder))
    assert perfect["num_samples"] == 20 and perfect["metrics"] == {"acc1": 1.0, "acc5": 1.0,
                                                                   "mean_per_class_recall": 1.0}
    shuffled = run_one(classification_encoder(train + test, shuffle=True), "zeroshot_classification", str(folder))
    assert shuffled["metrics"]["acc1"] == 0.0 and shuffled["metrics"]["mean_per_class_recall"] == 0.0
    # Linear probe on the same folder: fit on its train split (30), scored on test (20).
    probe = run_one(classification_encoder(train + test), "linear_probe", str(folder))
    assert (probe["num_train"], probe["num_samples"], probe["split"]) == (30, 20, "test")
    assert probe["metrics"]["lp_acc1"] == 1.0
    webp = write_benchmark_wds(tmp_path / "webp", {"test": cifar_samples(shared_data, 1, ext="webp")},
                               classnames=CIFAR)
    assert len(list(load_classification(str(webp)).records)) == 10
    (folder / "test" / "nshards.txt").write_text("9\n")
    with pytest.raises(FileNotFoundError, match=r"shard not found: .*test/4.tar .*nshards.txt says 9"):
        load_classification(str(folder))
