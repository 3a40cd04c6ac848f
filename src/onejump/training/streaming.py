"""Training lenses straight from the model: every position of a token stream, no store written.

Each step forwards the sentences of exactly ``tokens_per_step`` positions
(:mod:`onejump.training.stream_data`), captures levels 0..K at every one of them, and takes one
optimiser step per lens on the mean loss over those positions, as tuned-lens trains (its defaults:
``num_steps=250`` steps of ``tokens_per_step=2**18`` tokens, a 65.5M-token budget). The losses are
the store trainers' (:class:`~onejump.training.tuned.TranslatorKL` for the tuned lens,
:class:`~onejump.training.objectives.HeadKL` or :func:`~onejump.training.objectives.mse_loss` for
the jumps): only the data source differs. A step's positions are forwarded in length-bucketed
batches of at most ``tokens_per_batch`` padded tokens, shuffled (seeded) within each batch, and
their gradients accumulated over micro-batches of ``micro_rows`` rows (memory), each weighted by
its share of the step, so the step's gradient is the mean over its positions. Every lens's
learning rate decays linearly to zero over ``num_steps`` (tuned-lens's schedule).

Validation: every ``eval_every`` steps (and before the first and after the last) each lens's exact
loss on every position of ``val_sentences`` held-out sentences is recorded; the weights of the
last step are kept (a fixed budget with a decaying schedule, as tuned-lens keeps them).

Random draws (the batch shuffles, the sampled vocabulary columns of the KL's normaliser) are seeded
per (step, batch, micro-batch), so the result depends on nothing but the corpus, the model and the
configuration: a run resumed from its checkpoint gives the uninterrupted run's lenses bit for bit,
and under ``torchrun`` (rank r forwards batches r, r + W, ...; the gradients are summed over the
ranks before each step) every rank holds the same lenses, equal to one process's up to the order
of float sums (BatchNorm's running statistics are averaged over the ranks, weighted by rows).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, NumericalError
from ..extract import LevelCapture, distributed_context
from ..extract_plan import collate
from ..interrupts import on_interrupt
from ..lenses.jumps import JumpBank
from ..lenses.onejump import OneJump, PerLevelLens
from ..lenses.tuned import TunedLens
from .checkpoint import Checkpoint, load_optimizer, optimizer_tensors
from .config import TrainConfig
from .objectives import HeadKL, HeadTargets, mse_loss
from .optim import bank_optimizer, tuned_optimizer
from .stream_data import Cursor, StepPlanner, StreamText, forward_batches, val_rows
from .tuned import TranslatorKL, TunedTrainConfig

#: The lenses a streaming run can train: the tuned lens, the K per-level jumps, the joint jump and
#: the residual joint jump (``h + BN(h) A B``).
STREAM_LENSES = ("tuned", "per-level", "joint", "joint-residual")
CHECKPOINT_NAME = "stream-checkpoint.safetensors"


@dataclass
class StreamConfig:
    """What a streaming run trains and how. ``tuned``: the tuned lens's recipe (its optimiser, learning
    rate, momentum, weight decay, clipping and KL summary; it starts at zero, tuned-lens's start);
    ``jumps``: the jumps' (objective, rank, optimiser, learning rate, BatchNorm). The budget is
    ``num_steps x tokens_per_step`` positions."""

    lenses: tuple[str, ...] = ("tuned",)
    tokens_per_step: int = 1 << 18
    num_steps: int = 250
    micro_rows: int = 256
    tokens_per_batch: int = 8192
    max_batch_size: int = 64
    val_sentences: int = 64
    eval_every: int = 50
    seed: int = 0
    tuned: TunedTrainConfig = field(default_factory=lambda: TunedTrainConfig(init="zero"))
    jumps: TrainConfig = field(default_factory=lambda: TrainConfig(objective="kl"))

    @property
    def token_budget(self) -> int:
        return self.tokens_per_step * self.num_steps

    def validate(self) -> None:
        unknown = [name for name in self.lenses if name not in STREAM_LENSES]
        if unknown or not self.lenses or len(set(self.lenses)) != len(self.lenses):
            raise ConfigError(f"lenses must be distinct names among {', '.join(STREAM_LENSES)}, got "
                              f"{', '.join(self.lenses) or 'none'}")
        for name in ("tokens_per_step", "num_steps", "micro_rows", "tokens_per_batch", "max_batch_size",
                     "val_sentences", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if any(name != "tuned" for name in self.lenses) and self.micro_rows < 2:
            raise ConfigError("jumps need micro-batches of >= 2 rows (BatchNorm's statistics)")
        self.tuned.validate()
        self.jumps.validate()

    def recipe(self) -> dict[str, Any]:
        """The settings that decide the result (the checkpoint's key, and each lens's record)."""
        tuned = {k: v for k, v in self.tuned.to_dict().items() if k in _TUNED_RECIPE}
        jumps = {k: v for k, v in self.jumps.to_dict().items() if k in _JUMP_RECIPE}
        head = {k: v for k, v in asdict(self).items() if k not in ("tuned", "jumps")}
        return {**head, "lenses": list(self.lenses), "tuned": {**tuned, "init": "zero"}, "jumps": jumps}


_TUNED_RECIPE = ("lr", "momentum", "nesterov", "weight_decay", "clip_grad_norm", "kl_top_k", "kl_negatives",
                 "optimizer", "muon_lr", "muon_momentum", "adam_lr")
_JUMP_RECIPE = ("lr", "objective", "rank", "weight_decay", "bn_momentum", "bn_eps", "kl_top_k", "kl_negatives",
                "optimizer", "muon_lr")


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class _Trainee:
    """One lens being trained: its module, loss, optimiser and schedule, and how it reads a micro-batch."""

    def __init__(self, name: str, lm: Any, config: StreamConfig, device: torch.device):
        K, H = lm.num_blocks, lm.hidden_size
        self.name, self.K = name, K
        jc = config.jumps
        dummy = HeadTargets(torch.zeros(1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1))
        if name == "tuned":
            tc = config.tuned
            self.module = TunedLens(lm).to(device)
            self.loss: Any = TranslatorKL(lm.adapter, dummy, negatives=tc.kl_negatives, seed=config.seed,
                                          device=device)
            self.opt = tuned_optimizer(self.module, tc)
            self.clip, self.kl = tc.clip_grad_norm, True
        else:
            joint = name != "per-level"
            self.module = JumpBank(1 if joint else K, H, jc.rank, levels=[-1] if joint else list(range(K)),
                                   eps=jc.bn_eps, momentum=jc.bn_momentum, seed=jc.seed,
                                   residual=name == "joint-residual").to(device)
            self.kl = jc.objective == "kl"
            self.loss = HeadKL(lm.adapter, dummy, negatives=jc.kl_negatives, seed=config.seed, device=device) \
                if self.kl else mse_loss
            self.opt = bank_optimizer(self.module, jc.optimizer, jc.lr, jc.weight_decay, jc.muon_lr)
            self.clip = None
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: max(0.0, 1.0 - s / config.num_steps))
        self.sums = torch.zeros(1 if name.startswith("joint") else K, dtype=torch.float64)

    def __call__(self, x: torch.Tensor, targets: HeadTargets | None, seed: int | None) -> torch.Tensor:
        """The loss per level (per jump) of the micro-batch ``x`` (n, K+1, H) on the training device."""
        n, K = x.shape[0], self.K
        rows = torch.arange(n)
        inp, tgt = x[:, :K], x[:, K]
        if self.name.startswith("joint"):  # every (row, exit level) pair is one example of the one jump
            inp, tgt, rows = inp.reshape(n * K, 1, -1), tgt.repeat_interleave(K, 0), rows.repeat_interleave(K)
        if self.kl:
            self.loss.targets = targets
            if seed is not None:
                self.loss.gen.manual_seed(seed)
        return self.loss(self.module, inp, tgt, rows)

    def buffers(self) -> list[torch.Tensor]:
        return [b for b in self.module.buffers()]


def _head_targets(lm: Any, h_last: torch.Tensor, top_k: int) -> HeadTargets:
    logp = torch.log_softmax(lm.adapter.head(h_last.to(next(lm.model.parameters()).dtype)).float(), -1)
    val, idx = logp.topk(min(top_k, logp.shape[-1]), dim=-1)
    return HeadTargets(torch.arange(len(h_last)), idx.cpu(), val.cpu())


class _Forward:
    """Forwards rows (:class:`~onejump.extract_plan.Sample`) and yields their levels in micro-batches."""

    def __init__(self, lm: Any, config: StreamConfig, top_k: int, with_targets: bool):
        self.lm, self.config, self.top_k, self.with_targets = lm, config, top_k, with_targets
        self.pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
        self.capture = LevelCapture(lm)

    def micro_batches(self, rows: list, batch: list[int], shuffle: int | None):
        ids, mask, at = collate(rows, batch, self.pad, self.lm.device)
        with self.capture:
            x = self.capture.run(ids, mask, at)
        if shuffle is not None:
            x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(shuffle)).to(x.device)]
        for m, start in enumerate(range(0, len(x), self.config.micro_rows)):
            xm = x[start:start + self.config.micro_rows]
            with torch.no_grad():
                targets = _head_targets(self.lm, xm[:, -1], self.top_k) if self.with_targets else None
            yield m, xm, targets


def _validate(trainees: list[_Trainee], fwd: _Forward, rows: list) -> dict[str, float]:
    totals = {t.name: 0.0 for t in trainees}
    n = 0
    for t in trainees:
        t.module.eval()
    with torch.no_grad():
        for batch in forward_batches(rows, fwd.config.tokens_per_batch, fwd.config.max_batch_size):
            for _, xm, targets in fwd.micro_batches(rows, batch, None):
                for t in trainees:
                    totals[t.name] += float(t(xm, targets, None).double().mean()) * len(xm)
                n += len(xm)
    for t in trainees:
        t.module.train()
    return {k: v / max(n, 1) for k, v in totals.items()}


def _all_reduce(trainees: list[_Trainee], rows_here: int, world: int) -> None:
    """Sum the gradients (and the loss sums) over the ranks; average BatchNorm's running statistics by rows."""
    if world <= 1:
        return
    import torch.distributed as dist

    for t in trainees:
        device = next(t.module.parameters()).device  # NCCL reduces device tensors only
        for p in t.module.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
        sums = t.sums.to(device)
        dist.all_reduce(sums)
        t.sums.copy_(sums.cpu())
        total = torch.tensor(float(rows_here), device=device)
        dist.all_reduce(total)
        for b in t.buffers():
            weighted = b * rows_here
            dist.all_reduce(weighted)
            b.copy_(weighted / total)


def train_streaming(lm: Any, text: StreamText, out_dir: str | Path, config: StreamConfig | None = None, *,
                    corpus: dict[str, Any] | None = None, progress: bool = True, checkpoint_every: int = 10,
                    on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train ``config.lenses`` on ``text``'s stream and save each into ``out_dir/<name>`` (a lens folder).

    Returns the lenses by name (on rank 0; other ranks return an empty dict). ``corpus`` describes the
    text's source for the lenses' records. The state is saved in ``out_dir`` every ``checkpoint_every``
    steps; a rerun with the same model, text and configuration resumes from it to the same lenses.
    ``on_step(step)`` is called after each step (tests interrupt a run there).
    """
    config = config or StreamConfig()
    config.validate()
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every must be an integer >= 1, got {checkpoint_every!r}")
    out = Path(out_dir)
    rank, world = distributed_context()
    device = lm.device
    trainees = [_Trainee(name, lm, config, device) for name in config.lenses]
    top_k = max(config.tuned.kl_top_k, config.jumps.kl_top_k)
    fwd = _Forward(lm, config, top_k, any(t.kl for t in trainees))
    key = json.dumps(["stream", config.recipe(), text.digest, lm.fingerprint, lm.num_blocks, lm.hidden_size],
                     sort_keys=True, default=str)
    ckpt = Checkpoint(out / CHECKPOINT_NAME, key)
    history: dict[str, Any] = {"steps": [], "val": {t.name: [] for t in trainees},
                               "train": {t.name: [] for t in trainees}}
    planner = StepPlanner(text, lm.tokenizer, config.tokens_per_step)
    step, seconds = 0, 0.0
    if (saved := ckpt.load()) is not None:
        step, seconds = _restore(saved, trainees, planner, history)
    held = val_rows(text, lm.tokenizer)
    t0 = time.perf_counter() - seconds
    T = config.tokens_per_step
    with on_interrupt(f"stream-train: nothing kept yet (its state is saved every {checkpoint_every} steps)") as kept:
        if step:
            kept.say(f"stream-train: its first {step} steps are kept in {ckpt.path}; rerun to resume")
        bar = tqdm(total=config.token_budget, initial=step * T, unit="tok", unit_scale=True, desc="stream-train",
                   disable=not progress or rank != 0)
        if step == 0 and rank == 0:
            _record(history, 0, _validate(trainees, fwd, held), trainees)
        while step < config.num_steps:
            rows = planner.next_step()
            here = 0
            for t in trainees:
                t.opt.zero_grad(set_to_none=True)
            for f, batch in enumerate(forward_batches(rows, config.tokens_per_batch, config.max_batch_size)):
                if f % world != rank:
                    continue
                for m, xm, targets in fwd.micro_batches(rows, batch, _seed(config.seed, step, f)):
                    for t in trainees:
                        per = t(xm, targets, _seed(config.seed, step, f, m))
                        if not torch.isfinite(per.detach()).all():
                            raise NumericalError(f"the {t.name} lens's training loss became non-finite at step "
                                                 f"{step}; lower its learning rate")
                        (per.sum() * (len(xm) / T)).backward()
                        t.sums += per.detach().double().cpu() * len(xm)
                    here += len(xm)
            _all_reduce(trainees, here, world)
            for t in trainees:
                if t.clip is not None:
                    torch.nn.utils.clip_grad_norm_(list(t.module.parameters()), t.clip)
                t.opt.step()
                t.sched.step()
            step += 1
            bar.update(T)
            if rank == 0 and (step % config.eval_every == 0 or step == config.num_steps):
                _record(history, step, _validate(trainees, fwd, held), trainees)
                bar.set_postfix({t.name: f"{history['val'][t.name][-1]:.4g}" for t in trainees})
            if rank == 0 and step % checkpoint_every == 0 and step < config.num_steps:
                if _save(ckpt, step, time.perf_counter() - t0, trainees, planner, history):
                    kept.say(f"stream-train: its first {step} steps are kept in {ckpt.path}; rerun to resume")
            if on_step is not None:
                on_step(step)
        bar.close()
    if rank != 0:
        return {}
    record = {"tokens_seen": step * T, "tokens_per_step": T, "num_steps": config.num_steps,
              "forward_tokens": planner.forward_tokens, "corpus": {**(corpus or {}), "train_sentences":
                                                                    len(text.train), "val_sentences": len(text.val),
                                                                    "val_positions": len(held),
                                                                    "digest": text.digest},
              "recipe": config.recipe(), "world_size": world, "history": history,
              "seconds": time.perf_counter() - t0}
    lenses = _lenses(lm, trainees, record, out)
    ckpt.clear()
    return lenses


def _record(history: dict[str, Any], step: int, val: dict[str, float], trainees: list[_Trainee]) -> None:
    history["steps"].append(step)
    for t in trainees:
        history["val"][t.name].append(val[t.name])
        seen = float(t.sums.sum()) / len(t.sums)
        history["train"][t.name].append(seen)
        t.sums.zero_()


def _lenses(lm: Any, trainees: list[_Trainee], record: dict[str, Any], out: Path) -> dict[str, Any]:
    lenses: dict[str, Any] = {}
    for t in trainees:
        extra = {"streaming": {**record, "lens": t.name}}
        module = t.module.eval()
        if t.name == "tuned":
            lens: Any = TunedLens(lm, module.weight, module.bias)
            lens.extra = extra
        elif t.name == "per-level":
            lens = PerLevelLens(lm, module.cpu(), extra=extra)
        else:
            lens = OneJump(lm, module.cpu(), trained_at=-1, extra=extra)
        lens.save_pretrained(out / t.name)
        lenses[t.name] = lens
    return lenses


def _save(ckpt: Checkpoint, step: int, seconds: float, trainees: list[_Trainee], planner: StepPlanner,
          history: dict[str, Any]) -> bool:
    tensors: dict[str, torch.Tensor] = {}
    state: dict[str, Any] = {"step": step, "seconds": seconds, "cursor": planner.cursor.to_list(),
                             "forward_tokens": planner.forward_tokens, "history": history, "lenses": {}}
    for t in trainees:
        tensors.update({f"{t.name}/{k}": v for k, v in t.module.state_dict().items()})
        tensors[f"{t.name}/sums"] = t.sums
        opt_tensors, opt_rest = optimizer_tensors(t.opt)
        tensors.update({f"{t.name}/{k}": v for k, v in opt_tensors.items()})
        state["lenses"][t.name] = {"optimizer": opt_rest, "schedule": t.sched.state_dict()}
    return ckpt.save(tensors, state)


def _restore(saved: tuple[dict[str, torch.Tensor], dict[str, Any]], trainees: list[_Trainee], planner: StepPlanner,
             history: dict[str, Any]) -> tuple[int, float]:
    tensors, state = saved
    for t in trainees:
        mine = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{t.name}/")}
        t.module.load_state_dict({k: mine[k] for k in t.module.state_dict()})
        t.sums.copy_(mine["sums"])
        load_optimizer(t.opt, mine, state["lenses"][t.name]["optimizer"])
        t.sched.load_state_dict(state["lenses"][t.name]["schedule"])
    planner.cursor = Cursor(*state["cursor"])
    planner.forward_tokens = int(state["forward_tokens"])
    history.update(state["history"])
    return int(state["step"]), float(state["seconds"])


__all__ = ["STREAM_LENSES", "StreamConfig", "train_streaming"]
