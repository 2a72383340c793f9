"""Run under torchrun by test_distributed.py: one suite, every rank's records and forward counts to a file.

python -m torch.distributed.run --nproc-per-node N tests/eval/dist_worker.py CHECKPOINT SUITE OUT_DIR BATCH
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clip_pretrain.eval.checkpoints import load_checkpoint  # noqa: E402
from clip_pretrain.eval.datasets import load_classification  # noqa: E402
from clip_pretrain.eval.distributed import init_from_env  # noqa: E402
from clip_pretrain.eval.features import extract_image_features  # noqa: E402
from clip_pretrain.eval.run import run_suite  # noqa: E402


class CountingEncoder:
    def __init__(self, inner) -> None:
        self.inner, self.image_calls, self.text_calls = inner, 0, 0
        self.preprocess, self.tokenizer = inner.preprocess, inner.tokenizer

    def encode_image(self, images):
        self.image_calls += 1
        return self.inner.encode_image(images)

    def encode_text(self, tokens):
        self.text_calls += 1
        return self.inner.encode_text(tokens)


def main() -> None:
    checkpoint, suite, out, batch = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    ranks = init_from_env("cpu")
    encoder = CountingEncoder(load_checkpoint(checkpoint))
    records = run_suite(encoder, suite, batch_size=batch, workers=1, model_id="dist-test", progress=False)
    calls = encoder.image_calls
    # The raw extraction too: rows must come back in dataset order whatever the sharding.
    import yaml

    first = yaml.safe_load(Path(suite).read_text())["tasks"][0]
    found = extract_image_features(encoder, load_classification(first["data"]).records, batch_size=batch, workers=2,
                                   progress=False)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{ranks.rank}.json").write_text(json.dumps({
        "world_size": ranks.world_size, "records": records,
        "image_calls": calls, "text_calls": encoder.text_calls,
        "keys": found.keys, "labels": found.labels.tolist(), "features": found.features.tolist()}))


if __name__ == "__main__":
    main()
