"""Image-text retrieval with several captions per image (CLIP_benchmark recall@k).

python -m clip_pretrain.eval.retrieval --checkpoint CK [--model NAME] --data D --out R.json \
    [--image-root DIR] [--split val] [--batch-size 64] [--workers N] [--device cuda|cpu] [--precision fp32|bf16]

D: MSCOCO 5k Karpathy test (`coco_test_karpathy.json` + --image-root), Flickr30k 1k Karpathy test
(`flickr30k_test_karpathy.txt` + --image-root), COCO `captions_val2017.json`, a captions .jsonl,
our shards, or CLIP_benchmark's webdataset layout.
"""
from __future__ import annotations

TASK = "zeroshot_retrieval"


def main(argv: list[str] | None = None) -> None:
    from clip_pretrain.eval.single import single_task_main

    single_task_main(TASK, "clip_pretrain.eval.retrieval", __doc__, argv, [
        ("--image-root", "image folder for a COCO .json / Flickr .txt (default: the file's folder)"),
    ])


if __name__ == "__main__":
    from clip_pretrain.eval.cli import run_cli

    run_cli(main)
