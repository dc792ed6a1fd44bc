"""The files of a benchmark run folder: settings, splits, one JSON per finished fold; atomic writes."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from smearflow.datasets import ImageDataset
from smearflow.training.benchmark_config import BenchmarkConfig

logger = logging.getLogger(__name__)


def relative_names(dataset: ImageDataset, paths) -> list[str]:
    """Paths of ``dataset`` relative to its root, as strings."""
    return [str(Path(p).relative_to(dataset.root)) for p in paths]


def write_json(path: Path, data) -> None:
    """Write ``data`` as JSON through a temporary file, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(data, indent=1, default=_json_default) + "\n")
    os.replace(temporary, path)


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def normalised(data) -> Any:
    """``data`` as it reads back from JSON (tuples become lists, numpy values plain)."""
    return json.loads(json.dumps(data, default=_json_default))


def fold_path(out_dir: Path, architecture: str, seed: int, fold: int) -> Path:
    """``folds/<architecture>/seed<S>-fold<K>.json``: its presence marks the fold finished."""
    return Path(out_dir) / "folds" / architecture / f"seed{seed}-fold{fold}.json"


def fold_files(out_dir: Path) -> list[Path]:
    """Every finished fold's JSON in a run folder."""
    return list((Path(out_dir) / "folds").glob("*/seed*-fold*.json"))


def check_or_start_run_folder(out_dir: Path, config: BenchmarkConfig, splits: dict, data_dir) -> None:
    """Start a run folder, or check that the one there holds the same settings and splits.

    Settings added after a run started read as their defaults, so such a run
    resumes under the same settings.

    Raises
    ------
    ValueError
        When the folder holds a benchmark with other settings (the
        architectures may differ) or other splits.
    """
    settings_path, splits_path = out_dir / "benchmark.json", out_dir / "splits.json"
    current = normalised(config.to_dict())
    if settings_path.is_file():
        defaults = normalised(BenchmarkConfig().to_dict())
        stored = {k: v for k, v in defaults.items() if k not in ("architectures",)}
        stored |= json.loads(settings_path.read_text())["config"]
        differing = sorted(
            key for key in set(stored) | set(current) if key != "architectures" and stored.get(key) != current.get(key)
        )
        if differing:
            raise ValueError(
                f"{out_dir} holds a benchmark with other settings ({', '.join(differing)}): "
                f"stored {[stored.get(k) for k in differing]}, received {[current.get(k) for k in differing]}. "
                "Resume with the same settings or choose another run folder"
            )
        if splits_path.is_file() and json.loads(splits_path.read_text()) != normalised(splits):
            raise ValueError(
                f"{out_dir}: the splits of {data_dir} differ from those in {splits_path} "
                "(the dataset changed since the run started); choose another run folder"
            )
        logger.info("resuming the benchmark in %s", out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(splits_path, splits)
    write_json(
        settings_path,
        {"config": current, "data": str(Path(data_dir)), "updated_at": datetime.now(UTC).isoformat(timespec="seconds")},
    )
