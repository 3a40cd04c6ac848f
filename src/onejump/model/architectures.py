"""Which causal LMs onejump handles: every model type in transformers' causal-LM auto mapping, tried.

Each type is built as a tiny random-init model from its config (:mod:`onejump.model.tiny_configs`,
no download) and given to the adapter, whose load-time probe accepts it only when the head
reproduces the model's logits and every level its block's output. ``python -m
onejump.model.architectures`` writes the result, ``docs/architectures.md``: verified, refused (what
differed) or skipped (what could not be built or run offline), with counts.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UnsupportedArchitectureError
from .adapter import ARCHITECTURES, ArchitectureAdapter
from .probe import probe_ids
from .tiny_configs import tiny_causal_lm

STATUSES = ("verified", "refused", "skipped")


@dataclass
class Outcome:
    """What happened to one model type."""

    model_type: str
    status: str  # one of STATUSES
    detail: str
    seconds: float = 0.0


def causal_lm_types() -> list[str]:
    """Every model type in transformers' causal-LM auto mapping, sorted."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def describe(adapter: ArchitectureAdapter) -> str:
    """How the adapter was found and what its head holds, in a few words."""
    how = "table" if adapter.model_type in ARCHITECTURES else "discovered"
    names = {id(m): n for n, m in adapter.model.named_modules()}
    norm = names.get(id(adapter.final_norm), "none") if adapter.final_norm is not None else "none"
    extras = [f"x{adapter.logit_scale:g}"] if adapter.logit_scale is not None else []
    extras += [f"soft-cap {adapter.logit_softcap:g}"] if adapter.logit_softcap is not None else []
    extras += ["project_out"] if adapter.project_out is not None else []
    tail = f", {', '.join(extras)}" if extras else ""
    return f"{how}: {names.get(id(adapter.blocks), '?')} (K {adapter.num_blocks}), norm {norm}{tail}"


def build(model_type: str) -> tuple[torch.nn.Module | None, Outcome | None]:
    """The tiny model, or the outcome 'skipped' saying why it cannot be built or run on token ids."""
    start = time.perf_counter()
    try:
        model = tiny_causal_lm(model_type)
    except ImportError as exc:
        return None, Outcome(model_type, "skipped", f"needs a package not installed ({_line(exc)})",
                             time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - every way a config can fail to build is a reason to report
        return None, Outcome(model_type, "skipped", f"cannot be built from its config offline ({_line(exc)})",
                             time.perf_counter() - start)
    try:
        ids, mask = probe_ids(model)
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    except Exception as exc:  # noqa: BLE001
        return None, Outcome(model_type, "skipped", f"its forward needs more than token ids ({_line(exc)})",
                             time.perf_counter() - start)
    return model, None


def try_type(model_type: str) -> Outcome:
    """Build ``model_type`` tiny and run the adapter with its probe."""
    start = time.perf_counter()
    model, skipped = build(model_type)
    if skipped is not None:
        return skipped
    try:
        adapter = ArchitectureAdapter.from_model(model)
    except UnsupportedArchitectureError as exc:
        return Outcome(model_type, "refused", str(exc), time.perf_counter() - start)
    return Outcome(model_type, "verified", describe(adapter), time.perf_counter() - start)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(outcomes: list[Outcome], transformers_version: str) -> str:
    """``docs/architectures.md``."""
    counts = {s: sum(o.status == s for o in outcomes) for s in STATUSES}
    intro = (
        f"Every model type in transformers {transformers_version}'s causal-LM auto mapping "
        f"(`MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`), built as a tiny random-init model from its config "
        "(no download) and given to onejump's adapter. **Verified**: the adapter's load-time probe found "
        "head(level K) equal to the model's logits and level k equal to block k's output "
        "(`onejump.model.probe`); **refused**: `load_model` raises `ArchitectureMismatchError` or "
        "`UnsupportedArchitectureError` with the reason shown; **skipped**: the tiny model cannot be "
        "built or run on token ids alone offline. The adapter's table covers "
        f"{len(ARCHITECTURES)} types; the rest are discovered from the module tree and config."
    )
    lines = [
        "# Architectures",
        "",
        *textwrap.wrap(intro, 100),
        "",
        f"Tried {len(outcomes)}: **{counts['verified']} verified**, {counts['refused']} refused, "
        f"{counts['skipped']} skipped.",
        "",
        "Regenerate with `python -m onejump.model.architectures --out docs/architectures.md`;",
        "`tests/test_architectures.py` checks every row against the installed transformers.",
        "",
        "| model type | result | how / why |",
        "|---|---|---|",
    ]
    lines += [f"| `{o.model_type}` | {o.status} | {_cell(o.detail)} |" for o in outcomes]
    return "\n".join(lines) + "\n"


def read_statuses(path: Path) -> dict[str, str]:
    """model type -> status, from a written ``docs/architectures.md`` (empty when absent)."""
    if not path.is_file():
        return {}
    found = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 3 and cells[1].startswith("`") and cells[2] in STATUSES:
            found[cells[1].strip("`")] = cells[2]
    return found


def main(argv: list[str] | None = None) -> int:
    import transformers
    from transformers.utils import logging as hf_logging

    parser = argparse.ArgumentParser(prog="python -m onejump.model.architectures", description=__doc__)
    parser.add_argument("types", nargs="*", help="model types to try (default: the whole mapping)")
    parser.add_argument("--out", help="write the markdown table here (default: print the outcomes only)")
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    outcomes = []
    for model_type in args.types or causal_lm_types():
        outcome = try_type(model_type)
        outcomes.append(outcome)
        print(f"{model_type:28s} {outcome.status:8s} {outcome.seconds:5.2f}s {outcome.detail}", flush=True)
    if args.out:
        Path(args.out).write_text(render(outcomes, transformers.__version__))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
