"""What a run measures about itself: each stage's seconds and peak resident memory, and the model's size.

Saved as each stage ends (``timings.json``, ``memory.json``) by whichever command ran it, so stages run
by separate commands, or a run cut short, keep theirs; the model's size (``model.json``) is written when
a command loads the model, so that the report, which never loads it, can print it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from ..io import atomic_write_text
from ..memory import PeakProbe, module_mib
from .layout import RunLayout


@dataclass
class RunState:
    """Timings, peak resident memory and the stages reused in this process.

    ``peak_rss[stage]``: the stage's peak RSS in MiB; ``peak_method[stage]``: ``"stage peak"`` (the
    high-water mark was reset when it began) or ``"process peak so far"`` (it could not be reset).
    """

    timings: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    peak_rss: dict[str, float] = field(default_factory=dict)
    peak_method: dict[str, str] = field(default_factory=dict)


class Probes:
    """The timing and memory probes of one run folder."""

    def __init__(self, layout: RunLayout):
        self.layout = layout
        self.state = RunState()
        self._probes: dict[float, PeakProbe] = {}  # by the start time of the stage they measure
        self._model: dict[str, Any] | None = None  # the loaded model's size, until it is written

    def start(self) -> float:
        """A stage begins: its memory high-water mark is reset; returns its start time (for :meth:`timed`)."""
        probe = PeakProbe().start()
        t0 = time.perf_counter()
        self._probes[t0] = probe
        return t0

    def timed(self, stage: str, t0: float) -> None:
        """A stage started at ``t0`` ends: record its seconds (added up) and its peak RSS (the highest)."""
        state = self.state
        state.timings[stage] = round(state.timings.get(stage, 0.0) + time.perf_counter() - t0, 3)
        probe = self._probes.pop(t0, None)
        if probe is not None:
            peak = round(probe.stop(), 1)
            state.peak_rss[stage] = max(peak, state.peak_rss.get(stage, 0.0))
            state.peak_method[stage] = "stage peak" if probe.exact else "process peak so far"
        self.all_timings()
        self.all_peaks()
        if self._model is not None:
            atomic_write_text(self.layout.model_json, json.dumps(self._model, indent=1))
            self._model = None

    def all_timings(self) -> dict[str, float]:
        """This invocation's stage timings merged into those recorded by earlier ones (timings.json)."""
        path = self.layout.timings_json
        saved = json.loads(path.read_text()) if path.is_file() else {}
        saved.update(self.state.timings)
        atomic_write_text(path, json.dumps(saved, indent=1))
        return saved

    def all_peaks(self) -> dict[str, dict[str, Any]]:
        """This invocation's per-stage peak RSS merged into those recorded by earlier ones (``memory.json``:
        ``{"peak_rss_mib": {stage: MiB}, "method": {stage: "stage peak" | "process peak so far"}}``)."""
        path = self.layout.memory_json
        saved = json.loads(path.read_text()) if path.is_file() else {}
        peaks = {**saved.get("peak_rss_mib", {}), **self.state.peak_rss}
        method = {**saved.get("method", {}), **self.state.peak_method}
        out = {"peak_rss_mib": peaks, "method": method}
        atomic_write_text(path, json.dumps(out, indent=1))
        return out

    def record_model(self, lm: Any) -> None:
        """The loaded model's own size (its parameters' bytes, a tied weight once), for the report; written
        with the stage's timings when it ends (nothing is written before a stage has done its work)."""
        model = lm.model
        params = list(model.parameters())
        self._model = {"model_mib": round(module_mib(model), 1), "model_parameters": sum(p.numel() for p in params),
                       "model_dtype": str(params[0].dtype).replace("torch.", "")}

    def memory_summary(self) -> dict[str, Any]:
        """Each stage's peak RSS beside the model's own size (as the last command that loaded it measured)."""
        path = self.layout.model_json
        model = json.loads(path.read_text()) if path.is_file() else {}
        return {**self.all_peaks(), **model}


__all__ = ["Probes", "RunState"]
