"""`${oc.env:NAME}` and `${oc.env:NAME,default}` in config values (OmegaConf's spelling, without OmegaConf).

A value that is one interpolation and nothing else takes the variable's YAML type
(`micro_batch: ${oc.env:MICRO_BATCH,32}` is the integer 32); inside a longer string it is pasted
as text (`run_dir: /scratch/${oc.env:USER}/b32`). Variables that look like secrets are refused:
the resolved config is written to RUN/config.yaml, every checkpoint and wandb.
"""

from __future__ import annotations

import os
import re
from typing import Any

import yaml

INTERPOLATION = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)(?:,([^}]*))?\}")
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


def expand_env(value: Any, key: str) -> Any:
    """`value` (a parsed YAML tree under dotted `key`) with every interpolation resolved.
    Raises ValueError, one line naming the key, for a variable unset and without a default."""
    if isinstance(value, dict):
        return {name: expand_env(item, f"{key}.{name}" if key else str(name)) for name, item in value.items()}
    if isinstance(value, list):
        return [expand_env(item, f"{key}[{index}]") for index, item in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = INTERPOLATION.fullmatch(value.strip())
    text = INTERPOLATION.sub(lambda match: _lookup(match, key), value)
    other = re.search(r"\$\{[^}]*\}", INTERPOLATION.sub("", value))
    if other:
        raise ValueError(f"config key {key}: {other.group(0)} is not an interpolation this loader knows; "
                         "write ${oc.env:NAME} or ${oc.env:NAME,default}")
    if whole is None or "&" in text or "*" in text:  # no YAML anchors/aliases from the environment (alias bombs)
        return text
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return parsed if isinstance(parsed, (str, int, float, bool, list)) or parsed is None else text


def _lookup(match: re.Match, key: str) -> str:
    name, default = match.group(1), match.group(2)
    if SECRET_NAME.search(name):
        raise ValueError(f"config key {key}: ${{oc.env:{name}}} looks like a secret, and the resolved config is "
                         "saved with the run and its checkpoints; leave it in the environment, where its library reads it")
    if name in os.environ:
        return os.environ[name]
    if default is None:
        raise ValueError(f"config key {key}: environment variable {name} is not set; export it or give a "
                         f"default as ${{oc.env:{name},DEFAULT}}")
    return default.strip()
