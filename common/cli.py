"""The program name a CLI's usage line shows: the console script the user typed (pyproject.toml),
or `python -m MODULE` when run that way (argparse would show `train.py`)."""
from __future__ import annotations

import sys
from pathlib import Path


def prog_name(module: str) -> str:
    script = Path(sys.argv[0]).name
    return script if script.startswith("clip") and not script.endswith(".py") else f"python -m {module}"
