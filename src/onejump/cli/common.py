"""What the commands share: loading the model, the run folder and its lock, the training options."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .options import PRESET_FIELDS, field_values


def _load_model(args: argparse.Namespace):
    from ..model.loading import load_model

    return load_model(args.model, device=args.device if args.device_map is None else None, dtype=args.dtype,
                      device_map=args.device_map, progress=not args.quiet)


def _data_args(args: argparse.Namespace):
    from ..experiment.presets import DataArgs

    return DataArgs(**field_values(args, DataArgs))


def _lock(folder: Path):
    """Lock an output folder (only rank 0 under torchrun: the ranks share it on purpose)."""
    import contextlib
    import os

    from ..io import folder_lock

    return folder_lock(folder) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext()


def _train_config(args: argparse.Namespace):
    """TrainConfig from the preset, overridden by explicit flags (a preset's setting left unset is None)."""
    from ..experiment.presets import PRESETS
    from ..training.config import TrainConfig

    given = {name: value for name, value in field_values(args, TrainConfig).items()
             if value is not None or name not in PRESET_FIELDS}
    config = TrainConfig(**{**PRESETS[args.preset].train, **given})
    config.validate()
    return config


def _rank_multiplier(args: argparse.Namespace) -> int:
    from ..experiment.presets import PRESETS

    return 1 if args.rank is not None else PRESETS[args.preset].rank_multiplier


def _run(args: argparse.Namespace, *, existing: bool = True):
    from ..experiment.run import Run

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a file, not a folder: give a run folder (new or existing)")
    if existing and (Path(args.out) / "manifest.json").is_file() and (Path(args.out).parent / "run.json").is_file():
        raise ConfigError(f"--out {args.out} is the store of a run; give the run folder: --out {Path(args.out).parent}")
    run = Run(args.out, device=args.device, dtype=args.dtype, device_map=args.device_map, progress=not args.quiet)
    if existing:
        run.data_args()  # a clear error before anything is written if this is not a run folder
    return run


def _int_list(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--{name} must be comma-separated integers, got '{text}'") from None
    if not values or any(not 1 <= v <= MAX_MULTIPLIER for v in values):
        raise ConfigError(f"--{name} must list integers from 1 to {MAX_MULTIPLIER}, got '{text}'")
    return values


# A rank multiplier m gives rank m floor(H/100): above 100 it would pass H for every model.
MAX_MULTIPLIER = 100

