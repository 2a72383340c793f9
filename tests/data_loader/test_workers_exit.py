"""A process that still holds a loader iterator at exit ends: its workers ignore SIGTERM (launchers
signal the whole process group), so multiprocessing's exit hook alone would wait for them forever."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.data_loader.loader_helpers import write_shards

REPO = Path(__file__).resolve().parents[2]
HOLD_AN_ITERATOR = """
import sys
import open_clip
from clip_pretrain.data.loader import DataConfig, build_loader
loader = build_loader(DataConfig(train=sys.argv[1], workers=2, shuffle_buffer=4), batch_size=2,
                      preprocess=open_clip.image_transform(32, is_train=True),
                      tokenizer=open_clip.get_tokenizer("ViT-B-32"), seed=0)
batches = iter(loader)
next(batches)  # a module global: the generator and its DataLoader workers live until exit
print("exiting", flush=True)
"""


def test_exit_with_a_live_loader_iterator_does_not_hang(tmp_path):
    write_shards(tmp_path, [6] * 4)
    done = subprocess.run([sys.executable, "-c", HOLD_AN_ITERATOR, str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)  # hung for good before the exit hook (TimeoutExpired)
    assert done.returncode == 0 and done.stdout.strip() == "exiting", done.stderr[-2000:]
