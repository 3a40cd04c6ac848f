"""The training configuration (one home for every training setting) and the training history."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConfigError
from ..fields import option
from ..limits import OPTIONS

OBJECTIVES = ("mse", "kl")



@dataclass
class TrainConfig:
    """Hyper-parameters of jump training, with the reason for each default.

    - ``lr=1e-2``: h^K has a large scale (per-dimension variances up to ~5e4 on SmolLM2), so
      Adam's usual 1e-3 was still improving after 200 epochs; on a SmolLM2 store (810 train
      samples) 1e-2 and 3e-2 reached the same validation loss (fraction of variance unexplained
      0.758 vs 0.763, 1e-3: 0.870 after 200 epochs) and 1e-2 was steadier.
    - ``batch_size=128``: ~60 updates per epoch on 9000 samples, large enough for stable
      per-batch BatchNorm statistics; 64 and 256 gave the same validation loss (0.755, 0.761).
    - ``max_epochs=200`` / ``patience=10``: an upper bound only; each jump keeps its best
      validation epoch and stops after 10 epochs without improvement.
    - ``val_fraction=0.1``: 10% of the train split picks the stopping epoch; the test split is
      never seen in training or selection.
    - ``seed=0``: seeds the init, the train/validation split and the batch order (same seed ->
      identical weights on the same device and thread count).
    - ``objective="mse"``: Eq. 2. ``"kl"``: KL from the model's next-token distribution through the
      frozen head (:mod:`onejump.training.objectives`; needs the model's adapter), beyond the paper.
    - ``kl_top_k=32`` / ``kl_negatives=2048``: the KL objective's target summary (top-k tokens
      + the rest's mass) and the uniform vocabulary samples of its training-time normaliser;
      on SmolLM2 the top 32 tokens hold most of p_final's mass and a step then touches ~3-4k
      of the 49k vocabulary columns.
    - ``residual=False``: the paper's jump ``BN(h) A B``; ``True`` predicts ``h + BN(h) A B``
      (same parameters; starts at the logit lens), beyond the paper.
    - ``optimizer="adam"``: Adam at ``lr`` on every parameter; ``"muon"``: Muon at ``muon_lr=0.02``
      on ``A`` and ``B`` and Adam at ``lr`` on the rest (:mod:`onejump.training.optim`), beyond the paper.
    - ``rank=None``: ``floor(H/100)`` as in the paper.
    - ``weight_decay=0``: the paper uses none.
    - ``bn_momentum=0.1``, ``bn_eps=1e-5``: ``nn.BatchNorm1d`` defaults.
    - ``eval_chunk=1024``: examples per validation forward pass (memory only, not results).
    - ``buffer_samples=16384``: size of the shuffle buffer, in samples. Training streams the train
      split from the store's memory-mapped shards: each epoch the shards (cut into pieces of at
      most ``buffer_samples`` rows if bigger) are taken in a seeded random order, as many whole
      ones as fit are read into the buffer, its examples are permuted and cut into batches, and
      the fewer than one batch left over are carried into the next buffer. Memory is
      ``buffer_samples x (K+1) x H x 4`` bytes plus one batch and one shard's mapping, whatever
      the store's size. When the whole train split fits (``n_train <= buffer_samples``) it is read
      once and kept, and each epoch is one full random permutation, exactly as in-memory training
      (the same batches, bit for bit). The default is 1.2 GB of float32 at SmolLM2-135M's
      31 x 576 and holds the paper-scale split (9000 samples) whole; lower it for big models
      (Llama-2-7B, 33 x 4096: 8.9 GB) or when memory is short. Must hold one batch.
    """

    lr: float = field(default=1e-2, metadata=option("Adam learning rate", range=OPTIONS["lr"]))
    batch_size: int = field(default=128, metadata=option("training batch", range=OPTIONS["batch_size"]))
    max_epochs: int = field(default=200, metadata=option("epoch cap", range=OPTIONS["max_epochs"]))
    patience: int = field(default=10, metadata=option(
        "stop a jump after this many epochs without validation improvement", range=OPTIONS["patience"]))
    val_fraction: float = field(default=0.1, metadata=option(
        "part of the train split that picks each jump's stopping epoch", range=OPTIONS["val_fraction"]))
    seed: int = field(default=0, metadata=option("seed of init and batch order", flag="--train-seed",
                                                  range=OPTIONS["train_seed"]))
    objective: str = field(default="mse", metadata=option(
        "training objective: mse (Eq. 2) or kl (through the frozen head)", choices=OBJECTIVES))
    rank: int | None = field(default=None, metadata=option("rank r of the jumps", range=OPTIONS["rank"],
                                                             unset="floor(H/100)"))
    weight_decay: float = 0.0
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    eval_chunk: int = 1024
    buffer_samples: int = 16384
    kl_top_k: int = 32
    kl_negatives: int = 2048
    residual: bool = False
    optimizer: str = field(default="adam", metadata=option(
        "how the jumps are optimised: adam (Adam at --lr on every parameter) or muon (Muon at --muon-lr on the "
        "jump matrices, Adam at --lr on the rest)", flag="--jump-optimizer", choices=("adam", "muon")))
    muon_lr: float = field(default=0.02, metadata=option("Muon's learning rate (for --jump-optimizer muon and "
                                                          "--tuned-optimizer muon)", range=OPTIONS["lr"]))

    def validate(self) -> None:
        """Raise :class:`ConfigError` for out-of-range values."""
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown training objective '{self.objective}'; supported: {', '.join(OBJECTIVES)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"learning rate must be > 0, got {self.lr}")
        if self.batch_size < 2:
            raise ConfigError(f"batch size must be >= 2 (BatchNorm needs batch statistics), got {self.batch_size}")
        if self.max_epochs < 1 or self.patience < 1:
            raise ConfigError(f"the epoch cap and the patience must be >= 1, got {self.max_epochs} and {self.patience}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"the validation fraction must be in [0, 1), got {self.val_fraction}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.eval_chunk < 1:
            raise ConfigError("eval_chunk must be >= 1")
        if self.kl_top_k < 1 or self.kl_negatives < 0:
            raise ConfigError("kl_top_k must be >= 1 and kl_negatives >= 0")
        if self.optimizer not in ("adam", "muon"):
            raise ConfigError(f"unknown jump optimizer '{self.optimizer}'; use adam or muon")
        if not (self.muon_lr > 0 and math.isfinite(self.muon_lr)):
            raise ConfigError(f"muon_lr must be > 0, got {self.muon_lr}")
        if self.buffer_samples < self.batch_size:
            raise ConfigError(f"batch size {self.batch_size} is larger than the shuffle buffer ({self.buffer_samples} "
                              "samples): use a batch size (--batch-size) of at most that")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.optimizer == "adam":  # the default: trainings before the option keep their identity
            del out["optimizer"], out["muon_lr"]
        return out


@dataclass
class TrainHistory:
    """Per-epoch losses (Eq. 2 units) of every jump, and the epoch each jump kept.

    ``train_loss[e][j]`` is the mean training loss of jump j over epoch e (train-mode BN),
    ``val_loss[e][j]`` its validation loss after epoch e (eval-mode BN). ``best_epoch[j]`` is the
    epoch whose weights jump j holds (0-based). ``target_energy`` is the validation mean of
    ``||h^K - mean(h^K)||^2``, so ``val_loss / target_energy`` is the fraction of variance left
    unexplained.
    """

    kind: str
    levels: list[int]
    train_loss: list[list[float]] = field(default_factory=list)
    val_loss: list[list[float]] = field(default_factory=list)
    best_epoch: list[int] = field(default_factory=list)
    best_val_loss: list[float] = field(default_factory=list)
    epochs_run: int = 0
    n_train: int = 0
    n_val: int = 0
    target_energy: float = float("nan")
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
