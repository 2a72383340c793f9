"""Test-only launcher: `python -m tests.faults.fault_train ARGS` runs pretrain.train with faults
injected into DeepSpeed's engine, chosen by environment variables (none set: plain training).

  FAULT_STEP_SLEEP=S           sleep S seconds after every optimizer step (opens a kill window)
  FAULT_SAVE_SLEEP_TAG=TAG     after DeepSpeed wrote checkpoint TAG (before COMPLETE/latest), touch
                               RUN/checkpoints/IN_SAVE_WINDOW and sleep, so a test can kill -9 there
  FAULT_SAVE_PAUSE_TAG=TAG     like FAULT_SAVE_SLEEP_TAG but the save then goes on after
                               FAULT_SAVE_PAUSE_S seconds (default 8): a window for a signal mid-save
  FAULT_SAVE_ENOSPC_TAG=TAG    after DeepSpeed wrote checkpoint TAG, raise OSError(ENOSPC) as a
                               full disk would part-way through a save

Product code is untouched: only DeepSpeedEngine methods are wrapped, in this process.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from pathlib import Path


def install() -> None:
    from deepspeed.runtime.engine import DeepSpeedEngine

    step_sleep = float(os.environ.get("FAULT_STEP_SLEEP", "0"))
    sleep_tag = os.environ.get("FAULT_SAVE_SLEEP_TAG")
    enospc_tag = os.environ.get("FAULT_SAVE_ENOSPC_TAG")
    pause_tag, pause_s = os.environ.get("FAULT_SAVE_PAUSE_TAG"), float(os.environ.get("FAULT_SAVE_PAUSE_S", "8"))
    original_step, original_save = DeepSpeedEngine.step, DeepSpeedEngine.save_checkpoint

    def step(self, *args, **kwargs):
        result = original_step(self, *args, **kwargs)
        if step_sleep:
            time.sleep(step_sleep)
        return result

    def save_checkpoint(self, save_dir, tag=None, *args, **kwargs):
        result = original_save(self, save_dir, tag, *args, **kwargs)
        if tag == sleep_tag:
            (Path(save_dir) / "IN_SAVE_WINDOW").write_text(tag)
            time.sleep(600)
        if tag == pause_tag:
            (Path(save_dir) / "IN_SAVE_WINDOW").write_text(tag)
            time.sleep(pause_s)  # a handled signal interrupts the sleep only for its handler (PEP 475)
        if tag == enospc_tag:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(save_dir) / tag))
        return result

    DeepSpeedEngine.step = step
    DeepSpeedEngine.save_checkpoint = save_checkpoint


if __name__ == "__main__":
    install()
    from clip_pretrain.pretrain.train import main

    sys.exit(main(sys.argv[1:]))
