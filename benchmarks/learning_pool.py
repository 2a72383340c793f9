"""Pool learning-benchmark results over seeds: several results JSONs of one recipe -> one table.

    python -m benchmarks.learning_pool A.json B.json [...] [--out FILE.md]

Why: an option picked on seeds 0-4 (`learning_bench --seeds 5`) is confirmed on seeds it was not
picked on (`--seeds 5 --first-seed 5`), and the figure worth quoting is the mean over all of them.
The files must share the recipe (`learning_bench.recipe_settings`, seeds aside) and, per dataset,
the shards (`shards_sha256`; a file without one gets a warning); a variant name must mean the same
overrides everywhere, and a run found in two files (a reused baseline) must carry the same figures.
Anything else is refused in one line naming the file.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.learning_bench import (
    BenchError, DatasetSetup, RunRecord, Variant, baseline_table, mlm_lines, recipe_settings, summarize, variant_table,
)

# What a pooled file must share with the first one: the bench's recipe (the datasets are checked one by one).
RECIPE_KEYS = tuple(key for key in recipe_settings({}) if key != "datasets")


def say(text: str) -> None:
    print(f"learning_pool: {text}", file=sys.stderr, flush=True)


def load(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise BenchError(f"{path}: cannot read it as a results JSON: {error}") from None


def check_recipe(path: str, settings: dict, first: tuple[str, dict]) -> None:
    """Same optimizer/model recipe as the first file; each dataset it shares with it on the same
    budget and shards."""
    first_path, first_settings = first
    for key in RECIPE_KEYS:
        if settings.get(key) != first_settings.get(key):
            raise BenchError(f"{path}: {key} {settings.get(key)!r}, but {first_path} has {first_settings.get(key)!r}; "
                             "pool only runs of one recipe")
    for name, entry in settings.get("datasets", {}).items():
        other = first_settings.get("datasets", {}).get(name)
        if other is None:
            continue
        if entry.get("samples") != other.get("samples"):
            raise BenchError(f"{path}: {name} samples {entry.get('samples')}, but {first_path} has {other.get('samples')}")
        mine, theirs = entry.get("shards_sha256"), other.get("shards_sha256")
        if mine and theirs and mine != theirs:
            raise BenchError(f"{path}: ran {name} on other shards (sha256 {mine[:12]}) than {first_path} "
                             f"({theirs[:12]}); pool only runs on the same shards")
        if not (mine and theirs) and path != first_path:
            say(f"warning: {path if not mine else first_path} records no shards_sha256 for {name}: cannot check "
                f"that it ran on the shards of {first_path if not mine else path}")


def pool(paths: list[str]) -> tuple[list[RunRecord], list[Variant], dict[str, DatasetSetup]]:
    """Every run of every file, each (dataset, seed, trainer) once; the variants; the datasets."""
    records: dict[tuple, RunRecord] = {}
    variants: dict[str, Variant] = {}
    datasets: dict[str, DatasetSetup] = {}
    first: tuple[str, dict] | None = None
    for path in paths:
        payload = load(path)
        settings = payload.get("settings", {})
        first = first or (path, settings)
        check_recipe(path, settings, first)
        for name, overrides in payload.get("variants", {}).items():
            variant = Variant(name, tuple(overrides))
            if variants.setdefault(name, variant) != variant:
                raise BenchError(f"{path}: variant {name} is `{' '.join(overrides)}`, elsewhere "
                                 f"`{' '.join(variants[name].overrides)}`; rename one of them")
        for name, entry in settings.get("datasets", {}).items():
            datasets.setdefault(name, DatasetSetup(name, "", Path(), entry["samples"], entry.get("notes", []),
                                                   entry.get("shards_sha256", "")))
        for run in payload.get("runs", []):
            record = RunRecord(**run)
            key = (record.dataset, record.seed, record.trainer)
            if records.setdefault(key, record).metrics != record.metrics:
                raise BenchError(f"{path}: dataset {key[0]} seed {key[1]} {key[2]} differs from the same run in an "
                                 "earlier file; pool files whose shared runs are reused, not re-trained")
    return list(records.values()), list(variants.values()), datasets


def markdown(records: list[RunRecord], variants: list[Variant], datasets: dict[str, DatasetSetup],
             paths: list[str]) -> str:
    seeds = sorted({record.seed for record in records})
    counts = {trainer: len({r.seed for r in records if r.trainer == trainer})
              for trainer in dict.fromkeys(r.trainer for r in records)}
    lines = [f"Learning benchmark, pooled over seeds {', '.join(map(str, seeds))} from {len(paths)} results files:",
             "", *[f"- {path}" for path in paths], "",
             "Seeds per trainer: " + ", ".join(f"{trainer} {count}" for trainer, count in counts.items()) +
             "; mean ± sample std over seeds, in %.", ""]
    summary = summarize(records)
    lines += baseline_table(summary, {name: datasets[name] for name in summary})
    lines += variant_table(summary, [variant for variant in variants if variant.name in counts])
    return "\n".join(lines) + "\n" + mlm_lines(records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.learning_pool", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="results JSONs of benchmarks.learning_bench")
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    try:
        table = markdown(*pool(args.results), args.results)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table)
    if args.out:
        Path(args.out).write_text(table)
        say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
