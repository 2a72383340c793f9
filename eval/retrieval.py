"""Image-text retrieval with several captions per image (CLIP_benchmark recall@k).

python -m eval.retrieval --checkpoint CK [--model NAME] --data D --out R.json \
    [--image-root DIR] [--split val] [--batch-size 64] [--device cpu] [--precision fp32|bf16]
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from eval.cli import add_checkpoint_args, load_from_args, run_cli, write_json
from eval.datasets import EvalDataset, ImageBatches, load_retrieval
from eval.encoder import Encoder
from eval.metrics import retrieval_metrics

TASK = "zeroshot_retrieval"


@dataclass
class RetrievalEmbeddings:
    """image_features [N, D], text_features [T, D], text_to_image [T] (image index of each caption)."""

    image_features: torch.Tensor
    text_features: torch.Tensor
    text_to_image: torch.Tensor
    skipped: int

    def positive_pairs(self) -> torch.Tensor:
        """bool [T, N]: caption t belongs to image n."""
        num_images = self.image_features.shape[0]
        return torch.nn.functional.one_hot(self.text_to_image, num_images).bool()

    def scores(self) -> torch.Tensor:
        """Cosine similarities [T, N]."""
        return self.text_features @ self.image_features.T


def extract_embeddings(encoder: Encoder, dataset: EvalDataset, *, batch_size: int = 64,
                       device: str | torch.device = "cpu", max_samples: int | None = None,
                       progress: bool = True) -> RetrievalEmbeddings:
    """Embed every readable image and all its captions; captions of skipped images are dropped."""
    batches = ImageBatches(dataset.records, encoder.preprocess, batch_size,
                           max_samples=max_samples, desc=f"retrieval {dataset.name}", progress=progress)
    image_features, text_features, text_to_image = [], [], []
    num_images = 0
    for images, records in batches:
        image_features.append(encoder.encode_image(images.to(device)).cpu())
        captions = [caption for record in records for caption in record.captions]
        owners = [num_images + i for i, record in enumerate(records) for _ in record.captions]
        for start in range(0, len(captions), batch_size):
            tokens = encoder.tokenizer(captions[start:start + batch_size])
            text_features.append(encoder.encode_text(tokens.to(device)).cpu())
        text_to_image.extend(owners)
        num_images += len(records)
    batches.check_nonempty(dataset.name)
    if not text_to_image:
        raise ValueError(f"dataset {dataset.name}: no captions found; retrieval needs captions per image")
    return RetrievalEmbeddings(torch.cat(image_features), torch.cat(text_features),
                               torch.tensor(text_to_image), batches.skipped)


def retrieval_record(encoder: Encoder, data: str, *, split: str | None = None, image_root: str | None = None,
                     batch_size: int = 64, device: str | torch.device = "cpu", model: str = "",
                     pretrained: str = "", max_samples: int | None = None, progress: bool = True) -> dict:
    """One CLIP_benchmark-shaped record for retrieval on `data`."""
    dataset = load_retrieval(data, split, image_root)
    embeddings = extract_embeddings(encoder, dataset, batch_size=batch_size, device=device,
                                    max_samples=max_samples, progress=progress)
    return {
        "dataset": str(data), "model": model, "pretrained": pretrained, "task": TASK,
        "metrics": retrieval_metrics(embeddings.scores(), embeddings.positive_pairs()),
        "num_samples": int(embeddings.image_features.shape[0]),
        "num_captions": int(embeddings.text_features.shape[0]),
        "skipped": embeddings.skipped,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eval.retrieval", description=__doc__.splitlines()[0])
    add_checkpoint_args(parser)
    parser.add_argument("--data", required=True, help="captions .jsonl (or its dir), COCO captions .json, or shards")
    parser.add_argument("--out", required=True, help="results JSON path")
    parser.add_argument("--image-root", default=None, help="image folder for a COCO .json (default: its folder)")
    parser.add_argument("--split", default=None, help="split for a shard dir without ::split (train|val)")
    parser.add_argument("--max-samples", type=int, default=None, help="evaluate only the first N images")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    encoder = load_from_args(args)
    record = retrieval_record(encoder, args.data, split=args.split, image_root=args.image_root,
                              batch_size=args.batch_size, device=args.device, model=encoder.name,
                              pretrained=args.checkpoint, max_samples=args.max_samples)
    write_json(args.out, record)
    print(f"{record['dataset']}: " + ", ".join(f"{k}={v:.4f}" for k, v in record["metrics"].items())
          + f" ({record['num_samples']} images, {record['num_captions']} captions, "
            f"{record['skipped']} skipped) -> {args.out}")


if __name__ == "__main__":
    run_cli(main)
