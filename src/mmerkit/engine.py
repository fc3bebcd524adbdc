"""The one training loop for every model, on lightning-fabric (CPU, one GPU, many GPUs/nodes):
`prepare_training` (the set-up shared with the dry run), `train_seeds` (one run per seed),
`Engine` (fit / evaluate / predict_split / read_split). How the pieces fit together, what is
taken from Fabric and what is not (and why) is in docs/architecture.md, "Training".
"""

from __future__ import annotations

import inspect
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning_fabric import Fabric
from torch.utils.data import DataLoader, Sampler

from mmerkit import __version__
from mmerkit.checkpoint import (
    check_state_fits,
    intact_checkpoint,
    load_training_state,
    save_checkpoint,
    save_export,
)
from mmerkit.config import RunConfig, TrainConfig
from mmerkit.data.batch import Batch, StoreDataset, collate
from mmerkit.data.store import FeatureStore
from mmerkit.errors import ConfigError, DataError, TrainingDiverged, TrainingInterrupted
from mmerkit.metrics import (  # noqa: F401  (choose_threshold: public here too)
    HIGHER_IS_BETTER,
    binarize,
    choose_threshold,
    compute_metrics,
    degenerate_notes,
    format_metrics,
    metrics_at,
)
from mmerkit.models.base import MMERModel, SplitData, all_finite
from mmerkit.optim import build_optimizer, lr_lambda
from mmerkit.predict import collect_rows, forward_batches
from mmerkit.progress import ProgressBar
from mmerkit.run import Run, RunResult, environment

# the fix a diverged step names (a non-finite loss or gradient norm)
DIVERGED_FIX = "lower optim.lr or check the data for extreme values (`mmer data inspect`)"

# ----------------------------------------------------------------------------- devices

def build_fabric(t: TrainConfig, launch: bool = True) -> Fabric:
    """The one place a Fabric is made: devices checked, torchrun detected, processes launched.

    Under torchrun without `devices` set, one device per process torchrun started is used.
    More devices than the machine has is a ConfigError raised before any process is started or
    any file written (an unknown strategy never gets here: TrainConfig.strategy offers auto and
    ddp only, docs/architecture.md says why not FSDP).
    """
    devices, num_nodes = t.devices, t.num_nodes
    local_world = os.environ.get("LOCAL_WORLD_SIZE")
    if local_world and "devices" not in t.model_fields_set:
        devices = int(local_world)
        if "num_nodes" not in t.model_fields_set:
            num_nodes = max(int(os.environ.get("WORLD_SIZE", local_world)) // devices, 1)
    else:  # devices asked for (not the processes torchrun already started): check before launching
        check_device_count(t.accelerator, devices)
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    try:
        fabric = Fabric(accelerator=t.accelerator, devices=devices, num_nodes=num_nodes,
                        strategy=t.strategy, precision=t.precision)
    except (ValueError, RuntimeError, TypeError, MisconfigurationException) as e:
        raise ConfigError(f"cannot set up devices (accelerator={t.accelerator}, devices={devices}, "
                          f"num_nodes={num_nodes}, strategy={t.strategy}, precision={t.precision}): {e}") from None
    if launch and (fabric.world_size > 1 or num_nodes > 1):
        fabric.launch()
    return fabric


def check_device_count(accelerator: str, devices: int | str) -> None:
    """More devices than this machine has is a ConfigError. "Available" is
    torch.cuda.device_count() for cuda/gpu and os.cpu_count() for cpu, where each device is one
    training process (more would only oversubscribe the cores)."""
    try:
        n = int(devices)
    except (TypeError, ValueError):
        return  # "auto", a list of GPU ids, ...: Fabric checks those
    acc = str(accelerator).lower()
    if acc in ("auto", "gpu"):
        mps = getattr(torch.backends, "mps", None)
        if not torch.cuda.is_available() and mps is not None and mps.is_available():
            return  # Apple MPS: one device, Fabric says so
        acc = "cuda" if acc == "gpu" or torch.cuda.is_available() else "cpu"
    if acc == "cpu":
        have = os.cpu_count() or 1
        what = f"{have} CPU cores (os.cpu_count()), and CPU training runs one process per device"
    elif acc == "cuda":
        have = torch.cuda.device_count()
        what = f"{have} CUDA devices (torch.cuda.device_count())"
    else:
        return
    if n > have:
        fix = f"pass --devices {have} or fewer" if have else "pass --accelerator cpu"
        raise ConfigError(f"--devices {n} (train.devices) with accelerator {acc}: this machine has {what}; {fix}")

# ----------------------------------------------------------------------------- runs


@dataclass
class TrainingSetup:
    """What a training (and `mmer train --dry-run`) starts from: the Fabric, the opened store,
    the resolved config and the output directory."""

    fabric: Fabric
    store: FeatureStore
    config: RunConfig
    out: Path

    @property
    def steps_per_epoch(self) -> int:
        return optimizer_steps(len(self.store.split("train")), self.config, self.fabric.world_size)


def prepare_training(configure: Callable[[FeatureStore | None], RunConfig],
                     data: str | Path | FeatureStore | None, out: str | Path, *,
                     launch: bool = True) -> TrainingSetup:
    """The one set-up of `api.train` and its dry run: `out` checked, devices set up (processes
    launched unless `launch=False`, as the dry run counts them only), the store opened (a
    FeatureStore is used as given; the embedded one is generated by rank 0 first), the config
    resolved.

    `configure(store)` builds the RunConfig. It is called once without the store, for what finds
    the store (devices, `data.path`, the embedded data's parameters), and once with it, for the
    dataset defaults (configs/datasets/) that only the store's origin decides.
    """
    from mmerkit.run import training_store

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={str(out)!r} (CLI: --out) is a file; it names a directory that holds run "
                          "directories: choose another path")
    locating = configure(None)
    fabric = build_fabric(locating.train, launch=launch)
    if launch:
        with fabric.rank_zero_first():  # the embedded store is generated once, by rank 0
            store = training_store(data, locating)
    else:
        store = training_store(data, locating)
    return TrainingSetup(fabric, store, step_budget(configure(store), len(store.split("train")), fabric.world_size), out)


def train_batches(n: int, batch_size: int, world: int, drop_last: bool) -> int:
    """Training batches per process and epoch (what ShardSampler and the DataLoader give): a
    whole number of `world x batch_size` steps when dropping the last, else rounded up."""
    per_step = batch_size * world
    if drop_last and n >= per_step:
        return n // per_step
    return math.ceil(n / per_step)


def optimizer_steps(n_train: int, cfg: RunConfig, world: int) -> int:
    """Optimiser steps per epoch: the one count of the scheduler, the dry-run plan and memory."""
    t = cfg.train
    return max(train_batches(n_train, t.batch_size, world, t.drop_last) // cfg.optim.accumulate, 1)


def step_budget(cfg: RunConfig, n_train: int, world: int) -> RunConfig:
    """`cfg` with `train.epochs` raised to ceil(train.min_steps / steps per epoch) where the
    training split is too small for the recipe's epochs to reach that many optimiser steps.
    A recipe chosen on one data set is a number of updates, not of passes: 12 epochs are 384
    steps on the embedded data's 2,100 training samples but 180 on 1,000 (README, "Robustness").
    The schedule (warm-up, decay) is computed from the resolved total, like any epoch count."""
    t = cfg.train
    if not t.min_steps:
        return cfg
    epochs = max(t.epochs, math.ceil(t.min_steps / optimizer_steps(n_train, cfg, world)))
    return cfg.model_copy(update={"train": t.model_copy(update={"epochs": epochs})})


def train_seeds(setup: TrainingSetup, seeds: list[int] | None, resume: bool = False,
                on_valid: OnValid | None = None, evaluate_test: bool = True) -> list[RunResult]:
    """Train one run per seed into `setup.out` (what `api.train` does), each run named by
    mmerkit.run; several seeds also write aggregate.json. `on_valid` and `evaluate_test` go to
    the Engine (what `mmer tune` uses: a pruner sees each epoch, the test split is not read)."""
    from lightning_fabric.utilities.seed import seed_everything

    from mmerkit.memory import check_training_memory
    from mmerkit.models.base import create_model
    from mmerkit.run import finished_run_result, new_run_dir, resumable_run_dir, write_aggregate

    fabric, store, cfg0, out = setup.fabric, setup.store, setup.config, setup.out
    # refuse (or warn) before any run directory is written when a step will not fit in memory
    check_training_memory(create_model(cfg0.model_name, store.spec(), cfg0.model), store, cfg0,
                          quiet=not fabric.is_global_zero)
    results = []
    for seed in seeds or [cfg0.train.seed]:
        cfg = cfg0.model_copy(update={"train": cfg0.train.model_copy(update={"seed": seed})})
        engine = Engine(cfg, fabric, on_valid=on_valid, evaluate_test=evaluate_test)
        if resume:
            try:
                run_dir, note = resumable_run_dir(out, cfg.model_name, store, seed), None
            except ConfigError:
                finished = finished_run_result(out, cfg.model_name, store, seed)
                if finished is None:
                    raise
                # a finished run is not an error: say so, and report it as if it had just finished
                engine.print(f"{finished.run_dir} is finished (test_metrics.json is there): nothing to resume")
                results.append(finished)
                continue
        else:
            run_dir, note = new_run_dir(out, cfg.model_name, store, seed)
        run_dir = Path(fabric.broadcast(str(run_dir), src=0))
        if note:
            from rich.markup import escape

            engine.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
        seed_everything(seed, verbose=False)  # model initialisation depends on the seed too
        net = create_model(cfg.model_name, store.spec(), cfg.model)
        results.append(engine.fit(net, store, run_dir, resume=resume))
    if len(results) > 1 and fabric.is_global_zero:
        write_aggregate(out, results)
    return results


# ----------------------------------------------------------------------------- sampling


class ShardSampler(Sampler[int]):
    """Shuffled (train) or ordered (eval) indices of one rank's shard.

    Train: a permutation seeded by (seed, epoch), cut to a multiple of world * batch when
    drop_last, then strided over ranks. Eval: rank r takes rows r, r + W, ... with NO padding, so
    every sample is evaluated exactly once across ranks.
    """

    def __init__(self, n: int, rank: int, world: int, shuffle: bool, seed: int = 0,
                 batch_size: int = 1, drop_last: bool = False):
        self.n, self.rank, self.world = n, rank, world
        self.shuffle, self.seed, self.batch_size, self.drop_last = shuffle, seed, batch_size, drop_last
        self.epoch = 0
        self.skip = 0  # indices to skip at the start (resume mid-epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        if self.drop_last:
            keep = (self.n // (self.world * self.batch_size)) * self.world * self.batch_size
            idx = idx[:keep] if keep > 0 else idx
        return idx[self.rank::self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.skip:])

    def __len__(self) -> int:
        return max(len(self._indices()) - self.skip, 0)


# ----------------------------------------------------------------------------- results


@dataclass
class EvalResult:
    probs: np.ndarray  # (N, L) in split order
    labels: np.ndarray  # (N, L)
    metrics: dict[str, float] = field(default_factory=dict)




# ----------------------------------------------------------------------------- engine


# called after each epoch's validation with (epoch, validation metrics); may raise to stop the run
OnValid = Callable[[int, dict[str, float]], None]


class Engine:
    """Wires a model, a FeatureStore and a RunConfig into training, evaluation and prediction.

    `on_valid(epoch, metrics)` is called after each epoch's validation, once the epoch is saved
    (a hyper-parameter search reports to its pruner there; an exception it raises ends the run).
    `evaluate_test=False` finishes a run without reading the test split and without an export:
    valid_metrics.json is written, test_metrics.json (what marks a run finished) is not.
    """

    def __init__(self, cfg: RunConfig, fabric: Fabric | None = None, *, on_valid: OnValid | None = None,
                 evaluate_test: bool = True):
        self.cfg = cfg
        self.fabric = fabric or build_fabric(cfg.train)
        self.on_valid, self.evaluate_test = on_valid, evaluate_test
        self.console = _console(self.is_main)

    # -- helpers
    @property
    def is_main(self) -> bool:
        return self.fabric.is_global_zero

    def print(self, *args, **kwargs) -> None:
        """Rich console output on global rank 0 only (Fabric.print prints once per node)."""
        if self.is_main:
            self.console.print(*args, **kwargs)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """All-gather along dim 0 in rank order (identity on one process): Fabric.all_gather
        stacks the ranks' tensors on a new leading dim, which is folded into dim 0."""
        if self.fabric.world_size == 1:
            return x
        return self.fabric.all_gather(x.contiguous()).reshape(-1, *x.shape[1:])

    def _parallel_gather(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return self.gather if self.fabric.world_size > 1 else None

    def loader(self, store: FeatureStore, split: str, train: bool, seed: int = 0) -> DataLoader:
        t = self.cfg.train
        ds = StoreDataset(store, split, tuple(self.cfg.data.modalities) if self.cfg.data.modalities else None)
        bs = t.batch_size if train else t.eval_batch_size
        drop_last = train and t.drop_last and len(ds) >= bs * self.fabric.world_size
        sampler = ShardSampler(len(ds), self.fabric.global_rank, self.fabric.world_size, shuffle=train,
                               seed=seed, batch_size=bs, drop_last=drop_last)
        # a private generator: creating an iterator must not consume the global RNG (exact resume)
        return DataLoader(ds, batch_size=bs, sampler=sampler, collate_fn=collate,
                          num_workers=self.cfg.data.num_workers, drop_last=drop_last,
                          generator=torch.Generator().manual_seed(seed))

    def _to_device(self, batch: Batch) -> Batch:
        return batch.to(self.fabric.device)

    # -- evaluation
    def predict_split(self, model: MMERModel, store: FeatureStore, split: str,
                      drop_modality: str | None = None) -> EvalResult:
        """Probabilities for every sample of `split`, in split order, each computed exactly once
        (each process predicts its shard; the one prediction loop gathers them)."""
        out = forward_batches(model, self.loader(store, split, train=False), device=self.fabric.device,
                              keep=(), drop_modality=drop_modality, autocast=self.fabric.autocast,
                              gather=self._parallel_gather())
        labels = np.asarray(store.split(split).labels, dtype=np.uint8)
        if len(out.index) != len(labels):
            raise RuntimeError(f"prediction of split {split!r} returned {len(out.index)} of {len(labels)} rows")
        return EvalResult(out.probs, labels)

    def read_split(self, store: FeatureStore, split: str, fn: Callable[[Batch], torch.Tensor]) -> np.ndarray:
        """`fn` (Batch -> (B, ...) tensor) over every batch of a split, (N, ...) in split order on
        every process: what closed-form models fit on (SplitData.read)."""
        def step(batch: Batch) -> dict[str, torch.Tensor]:
            batch = self._to_device(batch)
            return {"index": batch.index, "value": fn(batch)}

        with torch.no_grad():
            rows = collect_rows(step, self.loader(store, split, train=False), self._parallel_gather())
        return rows["value"]

    def evaluate(self, model: MMERModel, store: FeatureStore, split: str, threshold,
                 drop_modality: str | None = None) -> EvalResult:
        res = self.predict_split(model, store, split, drop_modality=drop_modality)
        res.metrics = compute_metrics(res.labels, binarize(res.probs, threshold), store.labels)
        return res

    # -- training
    def fit(self, model: MMERModel, store: FeatureStore, run_dir: Path | None,
            resume: bool = False) -> RunResult:
        t = self.cfg.train
        self._check_splits(store)
        self.fabric.seed_everything(t.seed, workers=True, verbose=False)
        run = Run(run_dir) if run_dir is not None else None
        if model.closed_form:  # classic BR / CC / LP: one fit, no epochs
            return self._fit_closed_form(model, store, run)
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        s = self._session(model, store, run)
        if resume and run is not None and run.last_ckpt.exists():
            self._restore(s)
            self.print(f"[bold]resumed[/] {run.path} at epoch {s.state.epoch + 1}, batch {s.state.batch_in_epoch}")
        if run is not None and self.is_main:
            run.write_start(self.cfg, self._environment(store))
        try:
            for epoch in range(s.state.epoch, t.epochs):
                self._epoch(s, epoch)
        except KeyboardInterrupt:
            self._interrupted(s)
        return self._finish(model, store, run, s.state)

    def _session(self, model: MMERModel, store: FeatureStore, run: Run | None) -> _Session:
        """Loader, optimiser, schedule and the Fabric-wrapped model of one fit, in one object."""
        cfg = self.cfg
        loader = self.loader(store, "train", train=True, seed=cfg.train.seed)
        steps_per_epoch = optimizer_steps(len(store.split("train")), cfg, self.fabric.world_size)
        total_steps = steps_per_epoch * cfg.train.epochs
        optimizer = build_optimizer(model, cfg.optim)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(cfg.optim.schedule, total_steps, cfg.optim.warmup_proportion,
                                 steps_per_epoch, cfg.optim.warmup_init))
        fmodel, optimizer = self.fabric.setup(model, optimizer)
        label = f"{run.path.parent.name}/{run.path.name}" if run is not None else f"seed {cfg.train.seed}"
        return _Session(model, fmodel, optimizer, scheduler, store, loader, run, _TrainState(), label)

    def _epoch(self, s: _Session, epoch: int) -> None:
        """One epoch: train, validate, keep the best weights, save, log, print."""
        t, state, run = self.cfg.train, s.state, s.run
        state.epoch = epoch
        train_metrics = self._train_epoch(s)
        valid = self.evaluate(s.model, s.store, "valid", s.model.threshold)
        row_train = {"epoch": epoch + 1, "split": "train", **train_metrics}
        row_valid = {"epoch": epoch + 1, "split": "valid", **valid.metrics}
        state.history += [row_train, row_valid]
        score = valid.metrics[t.select_metric]
        better = HIGHER_IS_BETTER.get(t.select_metric, True)
        if state.best_score is None or (score >= state.best_score if better else score <= state.best_score):
            state.best_score, state.best_epoch = score, epoch + 1
            state.best_weights = {k: v.detach().clone() for k, v in s.model.state_dict().items()}
            if run is not None:
                self._save(s, run.best_ckpt, keep_prev=False)
        state.epoch, state.batch_in_epoch = epoch + 1, 0
        if run is not None:
            self._save(s, run.last_ckpt)
            if self.is_main:
                run.log_epoch(state.history, epoch + 1, row_train, row_valid,
                              tensorboard=t.logger == "tensorboard")
        loss = train_metrics.get("loss/total", float("nan"))
        self.print(f"{s.label}  epoch {epoch + 1}/{t.epochs}  loss {loss:.4f}"
                   f"  valid {format_metrics(valid.metrics)}")
        if self.on_valid is not None:
            self.on_valid(epoch + 1, valid.metrics)

    def _interrupted(self, s: _Session) -> None:
        """Ctrl-C: keep what was trained as a resumable last.ckpt at the exact batch, then say so."""
        run, state = s.run, s.state
        where = f"epoch {state.epoch + 1}, batch {state.batch_in_epoch}"
        if run is None:
            raise TrainingInterrupted(f"training interrupted at {where} (no run directory: nothing saved)") from None
        if self.fabric.world_size == 1:  # several processes may stop at different batches: keep their last save
            self._save(s, run.last_ckpt)
            if self.is_main and state.history:
                run.write_history(state.history)
            saved = f"saved {run.last_ckpt} at that batch"
        else:
            saved = f"{run.last_ckpt} holds the last epoch or checkpoint_every_n_steps save"
        raise TrainingInterrupted(f"training of {run.path} interrupted at {where}; {saved}") from None

    def _fit_closed_form(self, model: MMERModel, store: FeatureStore, run: Run | None) -> RunResult:
        """One call of the model's `fit_closed_form` (every rank fits the same model on the same
        gathered rows), then validate, choose the threshold and test as in fit()."""
        t = self.cfg.train
        model.to(self.fabric.device)
        if run is not None and self.is_main:
            run.write_start(self.cfg, self._environment(store))
        logged = model.fit_closed_form(SplitData(read=lambda split, fn: self.read_split(store, split, fn),
                                                 seed=t.seed, select_metric=t.select_metric))
        train = self.evaluate(model, store, "train", model.threshold)
        valid = self.evaluate(model, store, "valid", model.threshold)
        state = _TrainState(epoch=1, best_epoch=1, best_score=valid.metrics[t.select_metric],
                            history=[{"epoch": 1, "split": "train", **{f"fit/{k}": v for k, v in logged.items()},
                                      **train.metrics},
                                     {"epoch": 1, "split": "valid", **valid.metrics}],
                            best_weights={k: v.detach().clone() for k, v in model.state_dict().items()})
        if run is not None and self.is_main:
            run.log_epoch(state.history, 1, *state.history, tensorboard=t.logger == "tensorboard")
        fit_info = "  ".join(f"{k} {v:g}" for k, v in logged.items())
        self.print(f"fitted {model.name} on {store.splits['train']} samples  {fit_info}  "
                   f"valid {format_metrics(valid.metrics)}")
        return self._finish(model, store, run, state)

    def _check_splits(self, store: FeatureStore) -> None:
        for s in ("train", "valid", "test"):
            if s not in store.splits:
                raise DataError(f"store {store.path} has no {s!r} split (splits: {', '.join(store.splits)}); "
                                "training needs train, valid and test")

    def _train_epoch(self, s: _Session) -> dict[str, float]:
        t, accumulate = self.cfg.train, self.cfg.optim.accumulate
        model, fmodel, optimizer, scheduler, loader, state = (s.model, s.fmodel, s.optimizer, s.scheduler,
                                                               s.loader, s.state)
        fmodel.train()
        sampler: ShardSampler = loader.sampler  # type: ignore[assignment]
        sampler.set_epoch(state.epoch)
        sampler.skip = state.batch_in_epoch * loader.batch_size
        sums: dict[str, float] = {}
        n_batches = 0
        probs, labels = [], []
        shard = len(sampler._indices())
        total_batches = shard // loader.batch_size if loader.drop_last else -(-shard // loader.batch_size)
        show = self.is_main and t.progress
        terminal = show and self.console.is_terminal
        bar = ProgressBar(f"epoch {state.epoch + 1}", len(loader), enabled=terminal, console=self.console,
                          fields={"loss": float("nan")}, transient=True)
        # outside a terminal (a log file, a batch job) a bar draws nothing: a line per ~10% of the epoch
        line_every = max(len(loader) // 10, 1) if show and not terminal else 0
        started = time.monotonic()
        for i, batch in enumerate(loader, start=state.batch_in_epoch):
            batch = self._to_device(batch)
            last_micro = (i + 1) % accumulate == 0 or (i + 1) == total_batches
            with self.fabric.no_backward_sync(fmodel, enabled=not last_micro):
                with self.fabric.autocast():
                    out = fmodel(batch)
                    losses = model.loss(out, batch)
                if not all_finite(losses):
                    bad = [k for k, v in losses.items() if not torch.isfinite(v).all()]
                    raise TrainingDiverged(f"non-finite loss terms {bad} at epoch {state.epoch + 1}, batch {i}; "
                                           f"{DIVERGED_FIX}")
                self.fabric.backward(losses["total"] / accumulate)
            if last_micro:
                if self.cfg.optim.grad_clip:
                    norm = self.fabric.clip_gradients(fmodel, optimizer, max_norm=self.cfg.optim.grad_clip,
                                                      error_if_nonfinite=False)
                    # finite loss, overflowing gradients (torch's own error is a traceback); under
                    # fp16 mixed precision an overflow is the GradScaler's to handle: it skips the step
                    if not torch.isfinite(norm) and not self.cfg.train.precision.startswith("16"):
                        raise TrainingDiverged(f"non-finite gradient norm at epoch {state.epoch + 1}, batch {i}; "
                                               f"{DIVERGED_FIX}")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                state.step += 1
            model.on_train_batch_end(out, batch, self.gather)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            probs.append(out.probs.detach().float().cpu())
            labels.append(batch.labels.cpu())
            n_batches += 1
            state.batch_in_epoch = i + 1
            bar.advance(loss=float(losses["total"].detach()))
            if line_every and (i + 1) % line_every == 0:
                self.print(f"{s.label}  epoch {state.epoch + 1}/{t.epochs}  batch {i + 1}/{total_batches}  "
                           f"loss {float(losses['total'].detach()):.4f}  ({time.monotonic() - started:.0f} s)",
                           highlight=False)
            every = t.checkpoint_every_n_steps
            if every and s.run is not None and last_micro and state.step % every == 0:
                self._save(s, s.run.last_ckpt)
        bar.close()
        out_metrics = {f"loss/{k}": v / max(n_batches, 1) for k, v in sums.items()}
        out_metrics["lr"] = float(scheduler.get_last_lr()[0])
        if probs:
            p, y = torch.cat(probs).numpy(), torch.cat(labels).numpy().astype(np.uint8)
            out_metrics.update(compute_metrics(y, binarize(p, model.threshold), s.store.labels))
        return out_metrics

    def _finish(self, model: MMERModel, store: FeatureStore, run: Run | None, state: _TrainState) -> RunResult:
        t = self.cfg.train
        run_dir = run.path if run is not None else None
        if state.best_weights is None:  # resumed after the last epoch: best.ckpt holds them
            state.best_weights = load_training_state(run.best_ckpt)["model"]
        model.load_state_dict(state.best_weights)
        valid = self.predict_split(model, store, "valid")
        threshold = choose_threshold(t.threshold, model.threshold, valid.labels, valid.probs)
        valid.metrics = metrics_at(valid.labels, valid.probs, threshold, store.labels)
        if not self.evaluate_test:
            return self._finish_without_test(run, valid.metrics, state, threshold)
        test = self.predict_split(model, store, "test")
        test.metrics = metrics_at(test.labels, test.probs, threshold, store.labels)
        test_metrics = {**test.metrics, "best_epoch": state.best_epoch, "seed": t.seed}
        notes = degenerate_notes({name: binarize(res.probs, np.asarray(threshold))
                                  for name, res in (("valid", valid), ("test", test))}, store.labels)
        if run is not None and self.is_main:
            # the export first: test_metrics.json marks the run finished, so it is written last
            save_export(run.export_dir, model, export_meta(self.cfg, model, store, threshold))
            run.write_results(valid.metrics, test_metrics, notes)
        if run is not None and self.is_main:
            run.close_log()
        self.fabric.barrier()
        self.print(f"[bold green]test[/] (best epoch {state.best_epoch}, threshold "
                   f"{_fmt_threshold(threshold)}): {format_metrics(test.metrics)}")
        if self.is_main:
            for note in notes:
                warnings.warn(f"{run_dir or 'this run'}: {note}", stacklevel=2)
        return RunResult(run_dir, state.best_epoch, float(state.best_score), threshold, valid.metrics,
                         test_metrics, state.history, notes)

    def _finish_without_test(self, run: Run | None, valid: dict, state: _TrainState, threshold) -> RunResult:
        """The end of a run that must not read the test split: validation results only."""
        if run is not None and self.is_main:
            run.write_valid_metrics(valid)
        self.fabric.barrier()
        info = {"best_epoch": state.best_epoch, "seed": self.cfg.train.seed,
                "threshold": threshold if isinstance(threshold, float) else float(np.mean(threshold))}
        return RunResult(run.path if run is not None else None, state.best_epoch, float(state.best_score),
                         threshold, valid, info, state.history)

    # -- files
    def _save(self, s: _Session, path: Path, keep_prev: bool = True) -> None:
        """The training state through Fabric.save (called on every rank, as Fabric requires)."""
        save_checkpoint(self.fabric, path, {
            "model_name": s.model.name,
            "labels": list(s.store.labels),
            "model": s.fmodel,
            "optimizer": s.optimizer,
            "scheduler": s.scheduler,
            "rng": _rng_state(),
            "train_state": s.state.to_dict(),
            "config": self.cfg.model_dump(mode="json"),
        }, keep_previous=keep_prev)

    def _restore(self, s: _Session) -> None:
        """Model, optimiser and scheduler through Fabric.load, from last.ckpt or, if that is
        damaged, last.ckpt.prev; the checks before name the file and what does not fit."""
        path, ckpt = intact_checkpoint(s.run.last_ckpt, s.model.name, s.store.labels)
        check_state_fits(s.model, ckpt["model"], path)  # a clear error for another config's weights
        # our own file holds RNG states (numpy, python): full unpickling. lightning-fabric >= 2.6.1
        # takes weights_only (torch >= 2.6 defaults it to True); earlier versions load in full
        trusted = {"weights_only": False} if "weights_only" in inspect.signature(self.fabric.load).parameters else {}
        rest = self.fabric.load(path, {"model": s.fmodel, "optimizer": s.optimizer, "scheduler": s.scheduler},
                                **trusted)
        _set_rng_state(rest["rng"])
        s.state = _TrainState.from_dict(rest["train_state"])
        best = path.with_name("best.ckpt")
        if best.exists():
            s.state.best_weights = load_training_state(best, s.model.name, s.store.labels)["model"]

    def _environment(self, store: FeatureStore) -> dict:
        return environment(self.cfg, store, self.fabric.world_size, str(self.fabric.device))


# ----------------------------------------------------------------------------- pieces


@dataclass
class _TrainState:
    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    best_score: float | None = None
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_weights: dict | None = None

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
                "best_score": self.best_score, "best_epoch": self.best_epoch, "history": self.history}

    @classmethod
    def from_dict(cls, d: dict) -> _TrainState:
        return cls(**d)


@dataclass
class _Session:
    """One fit's moving parts, carried together: the model and its Fabric wrapper, optimiser,
    schedule, store, training loader, run directory (None: nothing written), state, and the
    label its progress lines carry."""

    model: MMERModel
    fmodel: Any
    optimizer: Any
    scheduler: Any
    store: FeatureStore
    loader: DataLoader
    run: Run | None
    state: _TrainState
    label: str


def export_meta(cfg: RunConfig, model: MMERModel, store: FeatureStore, threshold) -> dict:
    from mmerkit.models.base import build_model_config

    params = build_model_config(model.name, cfg.model).model_dump(mode="json")
    return {"model_name": model.name, "model": params, "spec": store.spec().to_dict(),
            "labels": store.labels, "threshold": threshold, "run_config": cfg.model_dump(mode="json"),
            "mmerkit_version": __version__, "data_source": store.meta.get("source", ""),
            # how media became the training features (mmer extract): predict_media rebuilds them
            **{k: store.meta[k] for k in ("extractors", "extract") if k in store.meta}}


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _fmt_threshold(t) -> str:
    return f"{t:.2f}" if isinstance(t, float) else "per-label"


def _console(enabled: bool):
    if not enabled:
        return None
    from rich.console import Console

    return Console(stderr=False, soft_wrap=True)  # one line per message: log files stay greppable
