"""Training the tuned lens: KL to the model's own final distribution through the frozen head.

Objective (as tuned-lens trains it): for every exit level k,
``L_k = mean_i KL(p_final(. | h_i^K) || softmax(head(h_i^k + W_k h_i^k + b_k)))``, minimised for all
levels at once (``sum_k L_k``; levels share no parameter, so each gets its own gradient). The
store's train split is streamed through the training reader; the loss is
:class:`~onejump.training.objectives.HeadKL`'s (top-k summary of p_final; in training the
log-partition is estimated on the batch's target tokens plus uniformly sampled vocabulary columns,
so a step does not touch all V columns; validation is exact over the vocabulary).

Optimiser and schedule: tuned-lens's defaults, which its paper (Belrose et al. 2023, "Eliciting
Latent Predictions from Transformers with the Tuned Lens") uses: SGD with Nesterov momentum 0.9,
learning rate 1.0 in tuned-lens's parametrisation (PyTorch's momentum SGD effectively multiplies
the step by 1/(1-momentum), so the optimiser gets ``lr * (1 - momentum)``), weight decay 1e-3
(towards the identity, since the translator is residual), gradient norm clipped to 1, and the
learning rate decayed linearly to zero over a fixed number of steps (250 in the paper), no warm-up.
Only the start differs by default: each level's translator starts at its least-squares affine map to
h^K (JTC, fitted in closed form on the same training rows, never on the held-out ones) rather than at
zero (the logit lens, tuned-lens's start, ``init="zero"``). tuned-lens's schedule was made for 65M
tokens; a store holds thousands of rows, and from zero 250 steps end far from converged. On
SmolLM2-135M (8,100 training rows), the held-out KL of the zero start is 2.24 nats after 250 steps
(still falling); the least-squares start is at 1.82 before any step, and 250 steps take it to 1.43.
Why these: the tuned lens is the field's reference baseline, so it is trained as its authors train
it rather than re-tuned for onejump. Only the batch differs: the paper takes 2^18 tokens per step
from the Pile; a onejump store has one position per sentence (9000 sentences by default), so a step
here holds ``batch_size`` store rows and one epoch is ``n_train / batch_size`` steps.

Because a full-rank translator has H^2 + H parameters per level and a store has only thousands of
rows, a seeded ``val_fraction`` of the train split is held out: every ``eval_every`` steps each
level's exact validation KL is measured and each level keeps the translator of its best
evaluation (the untrained translator, i.e. the logit lens, counts as evaluation 0); training ends at
``num_steps`` or when every level has gone ``patience`` evaluations without a new best. With
``val_fraction=0`` nothing is held out and the translators of the last step are kept.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, NumericalError
from ..fields import option
from ..interrupts import on_interrupt
from ..lenses.tuned import TunedLens
from ..limits import OPTIONS
from .checkpoint import Checkpoint, generator_tensor, load_generator, load_optimizer, optimizer_tensors
from .objectives import HeadKL, HeadTargets, head_targets
from .optim import tuned_optimizer
from .reader import _Reader, _Source, _Task, holdout_split

#: Where the translators start: ``zero`` (tuned-lens's: the logit lens) or ``jtc`` (the least-squares
#: affine map of each level to h^K, fitted on the same training rows: JTC, Din et al. 2023).
TUNED_INITS = ("zero", "jtc")
#: How the translators are optimised: ``sgd`` (tuned-lens's recipe, the default) or ``muon`` (Muon on
#: the K matrices, Adam on the biases: :class:`~onejump.training.optim.MuonAdam`).
TUNED_OPTIMIZERS = ("sgd", "muon")


@dataclass
class TunedTrainConfig:
    """Hyper-parameters of :func:`train_tuned_lens` (defaults: tuned-lens's, see the module doc).

    ``batch_size=256`` store rows per step (x K levels); ``num_steps=250`` the length of the linear
    decay; ``eval_every=50`` steps between validations (each is an exact pass
    of the head, all V columns, over the held-out rows); ``val_rows=256`` held-out rows scored by a
    validation (a seeded random subset when more are held out; 0: all of them): a validation costs
    ``val_rows x K`` rows through the whole head, as many multiply-adds as about V / (2 x the sampled
    columns) training steps (a step's forward and backward touch a few thousand columns): a fraction
    of the 50 steps between validations; the rows held out stay out of training all the same; ``patience=3``
    evaluations without a new best before a level counts as stopped; ``kl_top_k`` / ``kl_negatives``
    the loss's target summary and sampled normaliser (as for the KL-trained jumps); ``eval_rows=0``: validation rows per
    chunk chosen to keep a chunk's translated states near 16 MiB (the exact head itself runs over
    cache-sized blocks of the vocabulary, whatever the chunk); ``buffer_samples`` the shuffle
    buffer of the streaming reader. ``optimizer="sgd"``: tuned-lens's recipe above; ``"muon"``: Muon
    at ``muon_lr`` (momentum ``muon_momentum``) on the K translator matrices and Adam at ``adam_lr``
    (tuned-lens's Adam rate) on the biases (:class:`~onejump.training.optim.MuonAdam`), with the same
    schedule, weight decay and clipping. A step's ``batch_size`` rows are its tokens (one position each).
    """

    lr: float = 1.0
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-3
    clip_grad_norm: float = 1.0
    num_steps: int = field(default=250, metadata=option(
        "steps of the tuned lens's linear learning-rate decay, as in tuned-lens (default: %(default)s, "
        "tuned-lens's); each level keeps its best held-out translator, checked every 50 steps, and training stops "
        "early once no level has improved for 3 checks", flag="--tuned-steps", range=OPTIONS["tuned_steps"]))
    batch_size: int = 256
    eval_every: int = 50
    patience: int = 3
    val_fraction: float = 0.1
    seed: int = 0
    kl_top_k: int = 32
    kl_negatives: int = 2048
    eval_rows: int = 0
    buffer_samples: int = 16384
    init: str = field(default="jtc", metadata=option(
        "where the tuned lens starts: jtc (each level's least-squares affine map to the last level, fitted on the "
        "same training rows) or zero (tuned-lens's own start, the logit lens; made for millions of tokens, it ends "
        "far from converged on a store of thousands) (default: %(default)s)", flag="--tuned-init",
        choices=TUNED_INITS))
    val_rows: int = 256
    optimizer: str = field(default="sgd", metadata=option(
        "how the tuned lens is optimised: sgd (tuned-lens's recipe: Nesterov SGD, linear decay) or muon (Muon on "
        "the translator matrices at --muon-lr, Adam on the biases)", flag="--tuned-optimizer",
        choices=TUNED_OPTIMIZERS))
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    adam_lr: float = 1e-3

    def validate(self) -> None:
        for name in ("lr", "clip_grad_norm"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be > 0, got {value}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if min(self.num_steps, self.batch_size, self.eval_every, self.patience) < 1:
            raise ConfigError("num_steps, batch_size, eval_every and patience must be >= 1")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.kl_top_k < 1 or self.kl_negatives < 0 or self.eval_rows < 0:
            raise ConfigError("kl_top_k must be >= 1, kl_negatives and eval_rows >= 0")
        if self.buffer_samples < self.batch_size:
            raise ConfigError(f"batch size {self.batch_size} is larger than the shuffle buffer ({self.buffer_samples} "
                              "samples): use a batch size of at most that")
        if self.val_rows < 0:
            raise ConfigError(f"val_rows must be >= 0, got {self.val_rows}")
        if self.init not in TUNED_INITS:
            raise ConfigError(f"unknown tuned-lens start '{self.init}'; use {' or '.join(TUNED_INITS)}")
        if self.optimizer not in TUNED_OPTIMIZERS:
            raise ConfigError(f"unknown tuned-lens optimizer '{self.optimizer}'; use {' or '.join(TUNED_OPTIMIZERS)}")
        if not (self.muon_lr > 0 and self.adam_lr > 0 and 0 <= self.muon_momentum < 1):
            raise ConfigError("muon_lr and adam_lr must be > 0, muon_momentum in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        # lenses trained before these settings existed (zero start, every held-out row) keep their identity
        if self.init == "zero":
            del out["init"]
        if self.val_rows == 0:
            del out["val_rows"]
        if self.optimizer == "sgd":  # tuned-lens's recipe: the Muon settings do not apply
            for key in ("optimizer", "muon_lr", "muon_momentum", "adam_lr"):
                del out[key]
        return out


@dataclass
class TunedHistory:
    """``steps[e]``: the step of evaluation e (0: before training); ``val_kl[e][k]`` level k's exact
    validation KL then; ``train_kl[e][k]`` its mean training loss over the steps since evaluation
    e-1 (sampled normaliser; NaN at e = 0). ``best_step[k]``: the step whose translator level k keeps."""

    levels: list[int]
    steps: list[int] = field(default_factory=list)
    train_kl: list[list[float]] = field(default_factory=list)
    val_kl: list[list[float]] = field(default_factory=list)
    best_step: list[int] = field(default_factory=list)
    best_val_kl: list[float] = field(default_factory=list)
    steps_run: int = 0
    n_train: int = 0
    n_val: int = 0
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TranslatorKL(HeadKL):
    """:class:`HeadKL` for a :class:`TunedLens`: ``loss(lens, inp (B, K, H), tgt, rows) -> (K,)``."""

    def _outputs(self, lens: TunedLens, inp: torch.Tensor, levels: torch.Tensor | None = None) -> torch.Tensor:
        return lens.translate(inp).transpose(0, 1)  # (K, B, H): full rank


@torch.no_grad()
def _validate(lens: TunedLens, task: _Task, loss: TranslatorKL, device: torch.device, chunk: int) -> torch.Tensor:
    lens.eval()
    total = torch.zeros(lens.num_blocks, dtype=torch.float64, device=device)
    n = 0
    for inp, tgt, rows in task.chunks(chunk):
        total += loss(lens, inp.to(device), tgt.to(device), rows).double() * len(rows)
        n += len(rows)
    return (total / max(n, 1)).cpu()


def _sources(store: Any, config: TunedTrainConfig) -> tuple[_Source, _Source | None]:
    tr_rows, va_rows = holdout_split(store, config.val_fraction, config.seed)
    n_rows = len(tr_rows) + len(va_rows)
    if 0 < config.val_rows < len(va_rows):  # a seeded subset scores the validations; the rest stays held out
        pick = torch.randperm(len(va_rows), generator=torch.Generator().manual_seed(config.seed + 31337))
        va_rows = np.sort(va_rows[pick[:config.val_rows].numpy()])
    resident = n_rows <= config.buffer_samples
    reader = _Reader(store, min(config.buffer_samples, max(len(tr_rows), len(va_rows))))
    train = _Source(reader, tr_rows, config.buffer_samples, resident)
    return train, (_Source(reader, va_rows, config.buffer_samples, resident) if len(va_rows) else None)


class _BestPerLevel:
    """Validation bookkeeping: each level keeps its best translator; training stops when every level is stale."""

    def __init__(self, lens: TunedLens, hist: TunedHistory, val_task: _Task | None, loss: TranslatorKL,
                 device: torch.device, chunk: int, patience: int):
        K = lens.num_blocks
        self.lens, self.hist, self.val_task, self.loss = lens, hist, val_task, loss
        self.device, self.chunk, self.patience = device, chunk, patience
        self.best = {"weight": lens.weight.detach().clone(), "bias": lens.bias.detach().clone()}
        self.best_val = torch.full((K,), math.inf, dtype=torch.float64)
        self.best_step = torch.zeros(K, dtype=torch.long)
        self.stale = torch.zeros(K, dtype=torch.long)
        self.sums, self.seen = torch.zeros(K, dtype=torch.float64), 0

    def add(self, per_level: torch.Tensor, n: int) -> None:
        self.sums += per_level.detach().double().cpu() * n
        self.seen += n

    def record(self, step: int) -> bool:
        """Record an evaluation at ``step``; True when every level has stopped improving."""
        K = self.lens.num_blocks
        hist = self.hist
        hist.steps.append(step)
        hist.train_kl.append((self.sums / self.seen).tolist() if self.seen else [float("nan")] * K)
        self.sums, self.seen = torch.zeros(K, dtype=torch.float64), 0
        if self.val_task is None:  # nothing held out: keep the last translators
            hist.val_kl.append([float("nan")] * K)
            return False
        val = _validate(self.lens, self.val_task, self.loss, self.device, self.chunk)
        if not torch.isfinite(val).all():
            k = int((~torch.isfinite(val)).nonzero()[0])
            raise NumericalError(f"validation KL of the tuned lens at level {k} is {float(val[k])} at step {step}; "
                                 "lower the learning rate")
        hist.val_kl.append(val.tolist())
        better = val < self.best_val
        self.best_val[better] = val[better]
        self.best_step[better] = step
        mask = better.to(self.device)
        self.best["weight"][mask] = self.lens.weight.detach()[mask]
        self.best["bias"][mask] = self.lens.bias.detach()[mask]
        self.stale[better] = 0
        self.stale[~better] += 1
        self.lens.train()
        return bool((self.stale >= self.patience).all())

    def finish(self, step: int) -> None:
        """Put each level's best translator back (the last ones when nothing was held out)."""
        if self.val_task is not None:
            with torch.no_grad():
                self.lens.weight.copy_(self.best["weight"])
                self.lens.bias.copy_(self.best["bias"])
        else:
            self.best_step[:] = step
        self.hist.best_step = self.best_step.tolist()
        self.hist.best_val_kl = self.best_val.tolist()
        self.hist.steps_run = step


def _step(lens: TunedLens, loss: TranslatorKL, batch: tuple, opt: Any, sched: Any, clip: float, step: int,
          device: torch.device) -> torch.Tensor:
    inp, tgt, rows = batch
    per_level = loss(lens, inp.to(device), tgt.to(device), rows)
    if not torch.isfinite(per_level.detach()).all():
        k = int((~torch.isfinite(per_level.detach())).nonzero()[0])
        raise NumericalError(f"training KL of the tuned lens at level {k} became "
                             f"{float(per_level.detach()[k])} at step {step}; lower the learning rate")
    opt.zero_grad(set_to_none=True)
    per_level.sum().backward()
    torch.nn.utils.clip_grad_norm_([lens.weight, lens.bias], clip)
    opt.step()
    sched.step()
    return per_level


def _initial_lens(lm: Any, store: Any, config: TunedTrainConfig, train_src: _Source) -> TunedLens:
    """The translators' start: zero (the logit lens), or each level's least-squares map to h^K in residual
    form (``h @ M + c = h + h @ (M - I) + c``) fitted on the training rows only (not the held-out ones)."""
    if config.init == "zero":
        return TunedLens(lm)
    from ..lenses.jtc import LinearJTC

    W = LinearJTC.fit(store, rows=train_src.rows).W  # (K, H+1, H)
    H = W.shape[2]
    return TunedLens(lm, weight=(W[:, :H] - torch.eye(H)).transpose(1, 2), bias=W[:, H])


def train_tuned_lens(store: Any, lm: Any, config: TunedTrainConfig | None = None, *,
                     device: str | torch.device | None = None, progress: bool = True,
                     targets: HeadTargets | None = None, checkpoint: str | Path | Checkpoint | None = None,
                     checkpoint_every: int = 50) -> tuple[TunedLens, TunedHistory]:
    """Train a :class:`TunedLens` for ``lm`` on ``store``'s train split; returns it (eval mode) and its history.

    ``targets``: the store's :func:`~onejump.training.objectives.head_targets` if already computed
    (with at least ``kl_top_k`` tokens), shared with other KL trainings on the same store.
    ``checkpoint`` (a file path): the training state is saved there every ``checkpoint_every`` steps;
    a rerun with the same store, model and config resumes from it to the same result, and the file
    is removed when training ends.
    """
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every must be an integer >= 1, got {checkpoint_every!r}")
    config = config or TunedTrainConfig()
    config.validate()
    if (store.num_blocks, store.hidden_size) != (lm.num_blocks, lm.hidden_size):
        raise ConfigError(f"the store holds K={store.num_blocks}, H={store.hidden_size}; the model has "
                          f"K={lm.num_blocks}, H={lm.hidden_size}")
    dev = torch.device(device) if device is not None else lm.device
    K, H = lm.num_blocks, lm.hidden_size
    train_src, val_src = _sources(store, config)
    if targets is None or targets.top_k < config.kl_top_k:
        targets = head_targets(store, lm.adapter, top_k=config.kl_top_k, progress=progress)
    loss = TranslatorKL(lm.adapter, targets, negatives=config.kl_negatives, seed=config.seed, device=dev)
    lens = _initial_lens(lm, store, config, train_src).to(dev)
    opt = tuned_optimizer(lens, config)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / config.num_steps))
    train_task = _Task(train_src, list(range(K)), K)
    val_task = _Task(val_src, list(range(K)), K) if val_src is not None else None
    hist = TunedHistory(levels=list(range(K)), n_train=len(train_src), n_val=len(val_src) if val_src else 0,
                        config=config.to_dict())
    book = _BestPerLevel(lens, hist, val_task, loss, dev, config.eval_rows or max(1, (1 << 22) // (K * H)),
                         config.patience)
    gen = torch.Generator().manual_seed(config.seed + 104729)
    t0 = time.perf_counter()
    ckpt = checkpoint if checkpoint is None or isinstance(checkpoint, Checkpoint) else Checkpoint(
        checkpoint, json.dumps(["tuned", config.to_dict(), str(getattr(store, "identity", "")),
                                getattr(lm, "fingerprint", None), K, lm.hidden_size], sort_keys=True, default=str))
    loop = _Loop(lens, opt, sched, gen, loss, book, hist)
    saved = ckpt.load() if ckpt is not None else None
    step, skip = loop.restore(saved) if saved is not None else (0, 0)
    with on_interrupt(f"train tuned lens: nothing kept yet (its state is saved every {checkpoint_every} "
                      "steps)") as kept:
        if saved is not None:
            kept.say(_kept(step, ckpt))
        bar = tqdm(total=config.num_steps, initial=step, desc="train tuned lens", unit="step", disable=not progress,
                   leave=False)
        done = book.record(step) if saved is None else False
        while step < config.num_steps and not done:
            epoch_start, in_epoch = gen.get_state(), 0  # an epoch's batches follow from the generator's state
            for batch in train_task.batches(config.batch_size, gen):
                in_epoch += 1
                if skip:  # resuming: the batches this epoch had used before the checkpoint
                    skip -= 1
                    continue
                per_level = _step(lens, loss, batch, opt, sched, config.clip_grad_norm, step, dev)
                step += 1
                book.add(per_level, len(batch[2]))
                bar.update(1)
                if step % config.eval_every == 0 or step == config.num_steps:
                    done = book.record(step)
                    bar.set_postfix(val_kl=f"{float(book.best_val.mean()):.4g}")
                if done or step >= config.num_steps:
                    break
                if ckpt is not None and step % checkpoint_every == 0:
                    if loop.save(ckpt, step, epoch_start, in_epoch):
                        kept.say(_kept(step, ckpt))
                    else:
                        kept.say("train tuned lens: nothing kept (no room to save its state)")
        bar.close()
    book.finish(step)
    hist.seconds = time.perf_counter() - t0
    if ckpt is not None:
        ckpt.clear()
    return lens.eval(), hist


def _kept(step: int, ckpt: Checkpoint) -> str:
    return f"train tuned lens: its first {step} steps kept in {ckpt.path}"


class _Loop:
    """The state the remaining steps read, saved to and restored from a :class:`Checkpoint`: the
    translators, SGD's momentum, the schedule, the random generators (the batch order's, as at the
    start of the current epoch, and the sampled negatives'), the history so far and every number and
    tensor the validation bookkeeping keeps."""

    _BOOK_SKIP = ("lens", "hist", "val_task", "loss", "device")

    def __init__(self, lens: TunedLens, opt: Any, sched: Any, gen: torch.Generator, loss: TranslatorKL,
                 book: _BestPerLevel, hist: TunedHistory):
        self.lens, self.opt, self.sched, self.gen, self.loss, self.book, self.hist = \
            lens, opt, sched, gen, loss, book, hist

    def _book_items(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self.book).items() if k not in self._BOOK_SKIP}

    def save(self, ckpt: Checkpoint, step: int, epoch_start: torch.Tensor, in_epoch: int) -> bool:
        opt_tensors, opt_rest = optimizer_tensors(self.opt)
        tensors = {"weight": self.lens.weight, "bias": self.lens.bias, "gen": epoch_start,
                   "loss_gen": generator_tensor(self.loss.gen), **opt_tensors}
        numbers: dict[str, Any] = {}
        for name, value in self._book_items().items():
            if torch.is_tensor(value):
                tensors[f"book.{name}"] = value
            elif isinstance(value, dict) and all(torch.is_tensor(v) for v in value.values()):
                tensors.update({f"book.{name}.{k}": v for k, v in value.items()})
            elif isinstance(value, (bool, int, float)):
                numbers[name] = value
        hist = {k: getattr(self.hist, k) for k in ("steps", "train_kl", "val_kl")}
        return ckpt.save(tensors, {"step": step, "in_epoch": in_epoch, "optimizer": opt_rest,
                                   "schedule": self.sched.state_dict(), "book": numbers, "history": hist})

    def restore(self, saved: tuple[dict[str, torch.Tensor], dict[str, Any]]) -> tuple[int, int]:
        """Put the state back; returns (steps done, batches of the current epoch to skip)."""
        tensors, state = saved
        with torch.no_grad():
            self.lens.weight.copy_(tensors["weight"])
            self.lens.bias.copy_(tensors["bias"])
        for name, value in self._book_items().items():
            if torch.is_tensor(value):
                value.copy_(tensors[f"book.{name}"])
            elif isinstance(value, dict) and all(torch.is_tensor(v) for v in value.values()):
                for k, v in value.items():
                    v.copy_(tensors[f"book.{name}.{k}"])
        for name, value in state["book"].items():
            setattr(self.book, name, value)
        load_optimizer(self.opt, tensors, state["optimizer"])
        self.sched.load_state_dict(state["schedule"])
        load_generator(self.gen, tensors["gen"])
        load_generator(self.loss.gen, tensors["loss_gen"])
        for k, v in state["history"].items():
            setattr(self.hist, k, v)
        return int(state["step"]), int(state["in_epoch"])


__all__ = ["TranslatorKL", "TunedHistory", "TunedTrainConfig", "train_tuned_lens"]
