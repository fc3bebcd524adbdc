"""The one training loop for every model, on lightning-fabric (CPU, one GPU, many GPUs/nodes).

fit(): per epoch, train on shuffled shards (drop_last), validate on the WHOLE, unshuffled
validation split, keep the best epoch by validation `train.select_metric` (micro-F1 by default;
ties go to the later epoch, as in the authors' code). After training the best weights are
reloaded, the threshold is fixed on validation only, and the test split is evaluated whole,
once. Only rank 0 writes files and prints.

Closed-form models (`model.closed_form`: the classic BR / CC / LP) are fitted once on the whole
train split instead (`fit_arrays` on pooled features read through the same loader); validation,
threshold choice, the single test evaluation and the run files are the same.

Resume: `last.ckpt` holds model, optimiser, scheduler, RNG states, epoch and the position inside
the epoch; a resumed run replays the same sampler order and skips the batches already done, so
in deterministic mode it ends with the same metrics as an uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning_fabric import Fabric
from torch.utils.data import DataLoader, Sampler

from mmerkit import __version__
from mmerkit.checkpoint import (
    atomic_write_text,
    load_state_into,
    load_training_state,
    save_export,
    save_training_state,
)
from mmerkit.config import RunConfig, to_yaml
from mmerkit.data.batch import Batch, StoreDataset, collate
from mmerkit.data.store import FeatureStore
from mmerkit.metrics import (
    HIGHER_IS_BETTER,
    binarize,
    compute_metrics,
    format_metrics,
    search_threshold,
)
from mmerkit.models.base import MMERModel, all_finite
from mmerkit.optim import build_optimizer, lr_lambda

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
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # extra per-sample outputs


@dataclass
class FitResult:
    run_dir: Path | None
    best_epoch: int
    best_score: float
    threshold: float | list[float]
    valid_metrics: dict[str, float]
    test_metrics: dict[str, float]
    history: list[dict[str, Any]]


# ----------------------------------------------------------------------------- engine


class Engine:
    """Wires a model, a FeatureStore and a RunConfig into training, evaluation and prediction."""

    def __init__(self, cfg: RunConfig, fabric: Fabric | None = None):
        self.cfg = cfg
        t = cfg.train
        self.fabric = fabric or Fabric(accelerator=t.accelerator, devices=t.devices,
                                       num_nodes=t.num_nodes, strategy=t.strategy, precision=t.precision)
        if fabric is None and self.fabric.world_size > 1:
            self.fabric.launch()
        self.console = _console(self.fabric.global_rank == 0)

    # -- helpers
    @property
    def is_main(self) -> bool:
        return self.fabric.global_rank == 0

    def print(self, *args) -> None:
        if self.is_main:
            self.console.print(*args)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """All-gather along dim 0 in rank order (identity on one process)."""
        if self.fabric.world_size == 1:
            return x
        import torch.distributed as dist

        # state updates and metrics need no gradient: the plain collective is enough
        parts = [torch.empty_like(x) for _ in range(self.fabric.world_size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, 0)

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
    @torch.no_grad()
    def predict_split(self, model: MMERModel, store: FeatureStore, split: str,
                      drop_modality: str | None = None, keep_outputs: tuple[str, ...] = ()) -> EvalResult:
        """Probabilities for every sample of `split`, in split order, each computed exactly once."""
        was_training = model.training
        model.eval()
        loader = self.loader(store, split, train=False)
        n, L = len(loader.dataset), store.spec().num_labels
        rows, probs, extra = [], [], {k: [] for k in keep_outputs}
        for batch in loader:
            batch = self._to_device(batch)
            if drop_modality:
                batch = batch.without(drop_modality)
            with self.fabric.autocast():
                out = model(batch)
            rows.append(batch.index)
            probs.append(out.probs.float())
            for k in keep_outputs:
                extra[k].append(_output_field(out, k).float())
        local_idx = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long, device=self.fabric.device)
        local_p = torch.cat(probs) if probs else torch.zeros(0, L, device=self.fabric.device)
        all_idx, all_p = self._gather_rows(local_idx, local_p, n)
        result = np.zeros((n, L), np.float32)
        result[all_idx.cpu().numpy()] = all_p.cpu().numpy()
        outputs = {}
        for k, chunks in extra.items():
            local = torch.cat(chunks)
            idx_k, val_k = self._gather_rows(local_idx, local, n)
            arr = np.zeros((n, *val_k.shape[1:]), np.float32)
            arr[idx_k.cpu().numpy()] = val_k.cpu().numpy()
            outputs[k] = arr
        model.train(was_training)
        labels = np.asarray(store.split(split).labels, dtype=np.uint8)
        return EvalResult(result, labels, outputs=outputs)

    def _gather_rows(self, idx: torch.Tensor, val: torch.Tensor, n: int):
        """Gather (index, value) rows from all ranks; shards differ by at most one row, so pad."""
        world = self.fabric.world_size
        if world == 1:
            return idx, val
        per_rank = -(-n // world)
        pad = per_rank - idx.shape[0]
        idx = torch.cat([idx, idx.new_full((pad,), -1)])
        val = torch.cat([val, val.new_zeros((pad, *val.shape[1:]))])
        gi, gv = self.gather(idx), self.gather(val)
        keep = gi >= 0
        return gi[keep], gv[keep]

    def evaluate(self, model: MMERModel, store: FeatureStore, split: str, threshold,
                 drop_modality: str | None = None) -> EvalResult:
        res = self.predict_split(model, store, split, drop_modality=drop_modality)
        res.metrics = compute_metrics(res.labels, binarize(res.probs, threshold), store.labels)
        return res

    # -- training
    def fit(self, model: MMERModel, store: FeatureStore, run_dir: Path | None,
            resume: bool = False) -> FitResult:
        cfg, t = self.cfg, self.cfg.train
        self._check_splits(store)
        spec = store.spec()
        self.fabric.seed_everything(t.seed, workers=True, verbose=False)
        if model.closed_form:  # classic BR / CC / LP: one fit, no epochs
            return self._fit_closed_form(model, store, run_dir)
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        train_loader = self.loader(store, "train", train=True, seed=t.seed)
        steps_per_epoch = max(len(train_loader) // cfg.optim.accumulate, 1)
        total_steps = steps_per_epoch * t.epochs
        optimizer = build_optimizer(model, cfg.optim)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(cfg.optim.schedule, total_steps, cfg.optim.warmup_proportion))
        fmodel, optimizer = self.fabric.setup(model, optimizer)

        state = _TrainState()
        if resume and run_dir is not None and (run_dir / "last.ckpt").exists():
            state = self._restore(run_dir / "last.ckpt", model, optimizer, scheduler, store)
            self.print(f"[bold]resumed[/] {run_dir} at epoch {state.epoch + 1}, batch {state.batch_in_epoch}")
        if run_dir is not None and self.is_main:
            self._write_run_files(run_dir, store)

        for epoch in range(state.epoch, t.epochs):
            state.epoch = epoch
            train_metrics = self._train_epoch(fmodel, model, optimizer, scheduler, train_loader, state,
                                              run_dir, store, steps_per_epoch)
            valid = self.evaluate(model, store, "valid", model.threshold)
            row_train = {"epoch": epoch + 1, "split": "train", **train_metrics}
            row_valid = {"epoch": epoch + 1, "split": "valid", **valid.metrics}
            state.history += [row_train, row_valid]
            score = valid.metrics[t.select_metric]
            better = HIGHER_IS_BETTER.get(t.select_metric, True)
            if state.best_score is None or (score >= state.best_score if better else score <= state.best_score):
                state.best_score, state.best_epoch = score, epoch + 1
                state.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if run_dir is not None and self.is_main:
                    self._save(run_dir / "best.ckpt", model, optimizer, scheduler, state, spec, keep_prev=False)
            state.epoch, state.batch_in_epoch = epoch + 1, 0
            if run_dir is not None and self.is_main:
                self._save(run_dir / "last.ckpt", model, optimizer, scheduler, state, spec)
                self._write_metrics_csv(run_dir, state.history)
                self._log_tensorboard(run_dir, epoch + 1, row_train, row_valid)
            self.print(f"epoch {epoch + 1}/{t.epochs}  loss {train_metrics.get('loss/total', float('nan')):.4f}"
                       f"  valid {format_metrics(valid.metrics)}")

        return self._finish(model, store, run_dir, state)

    def _fit_closed_form(self, model: MMERModel, store: FeatureStore, run_dir: Path | None) -> FitResult:
        """Fit a closed-form model once on the whole train split (every rank fits the same model
        on the same gathered rows), then validate, choose the threshold and test as in fit()."""
        t = self.cfg.train
        model.to(self.fabric.device)
        if run_dir is not None and self.is_main:
            self._write_run_files(run_dir, store)
        x, y = self._pooled_split(model, store, "train")
        model.fit_arrays(x, y, seed=t.seed)
        train = self.evaluate(model, store, "train", model.threshold)
        valid = self.evaluate(model, store, "valid", model.threshold)
        state = _TrainState(epoch=1, best_epoch=1, best_score=valid.metrics[t.select_metric],
                            history=[{"epoch": 1, "split": "train", **train.metrics},
                                     {"epoch": 1, "split": "valid", **valid.metrics}],
                            best_weights={k: v.detach().clone() for k, v in model.state_dict().items()})
        if run_dir is not None and self.is_main:
            self._write_metrics_csv(run_dir, state.history)
            self._log_tensorboard(run_dir, 1, *state.history)
        self.print(f"fitted {model.name} on {len(x)} samples  valid {format_metrics(valid.metrics)}")
        return self._finish(model, store, run_dir, state)

    @torch.no_grad()
    def _pooled_split(self, model: MMERModel, store: FeatureStore, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(pooled features (N, D), labels (N, L)) of a whole split, in split order, on every rank."""
        loader = self.loader(store, split, train=False)
        rows, feats = [], []
        for batch in loader:
            batch = self._to_device(batch)
            rows.append(batch.index)
            feats.append(model.pooled_features(batch))
        n, dev = len(loader.dataset), self.fabric.device
        local_idx = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long, device=dev)
        local_x = torch.cat(feats) if feats else torch.zeros(0, model.num_features, device=dev)
        idx, x = self._gather_rows(local_idx, local_x, n)
        out = np.zeros((n, x.shape[1]), np.float32)
        out[idx.cpu().numpy()] = x.cpu().numpy()
        return out, np.asarray(store.split(split).labels, dtype=np.uint8)

    def _check_splits(self, store: FeatureStore) -> None:
        from mmerkit.errors import DataError

        for s in ("train", "valid", "test"):
            if s not in store.splits:
                raise DataError(f"store {store.path} has no {s!r} split (splits: {', '.join(store.splits)}); "
                                "training needs train, valid and test")

    def _train_epoch(self, fmodel, model, optimizer, scheduler, loader, state, run_dir, store,
                     steps_per_epoch) -> dict[str, float]:
        t, accumulate = self.cfg.train, self.cfg.optim.accumulate
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
        progress = _progress(self.console, f"epoch {state.epoch + 1}", len(loader)) if show else None
        for i, batch in enumerate(loader, start=state.batch_in_epoch):
            batch = self._to_device(batch)
            last_micro = (i + 1) % accumulate == 0 or (i + 1) == total_batches
            with self.fabric.no_backward_sync(fmodel, enabled=not last_micro):
                with self.fabric.autocast():
                    out = fmodel(batch)
                    losses = model.loss(out, batch)
                if not all_finite(losses):
                    bad = [k for k, v in losses.items() if not torch.isfinite(v).all()]
                    raise FloatingPointError(f"non-finite loss terms {bad} at epoch {state.epoch + 1}, batch {i}; "
                                             "lower optim.lr or check the data for extreme values "
                                             "(`mmer data inspect`)")
                self.fabric.backward(losses["total"] / accumulate)
            if last_micro:
                if self.cfg.optim.grad_clip:
                    self.fabric.clip_gradients(fmodel, optimizer, max_norm=self.cfg.optim.grad_clip)
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
            if progress:
                progress.advance(loss=float(losses["total"].detach()))
            every = t.checkpoint_every_n_steps
            if every and run_dir is not None and last_micro and state.step % every == 0:
                if self.is_main:
                    self._save(run_dir / "last.ckpt", model, optimizer, scheduler, state, store.spec())
                self.fabric.barrier()
        if progress:
            progress.close()
        out_metrics = {f"loss/{k}": v / max(n_batches, 1) for k, v in sums.items()}
        out_metrics["lr"] = float(scheduler.get_last_lr()[0])
        if probs:
            p, y = torch.cat(probs).numpy(), torch.cat(labels).numpy().astype(np.uint8)
            out_metrics.update(compute_metrics(y, binarize(p, model.threshold), store.labels))
        return out_metrics

    def _finish(self, model: MMERModel, store: FeatureStore, run_dir: Path | None, state: _TrainState) -> FitResult:
        t = self.cfg.train
        if state.best_weights is None:  # resumed after the last epoch: best.ckpt holds them
            state.best_weights = load_training_state(run_dir / "best.ckpt")["model"]
        model.load_state_dict(state.best_weights)
        valid = self.predict_split(model, store, "valid")
        threshold = choose_threshold(t.threshold, model.threshold, valid.labels, valid.probs)
        valid.metrics = compute_metrics(valid.labels, binarize(valid.probs, np.asarray(threshold)), store.labels)
        test = self.evaluate(model, store, "test", np.asarray(threshold))
        test_metrics = {**test.metrics, "best_epoch": state.best_epoch, "seed": t.seed,
                        "threshold": threshold if isinstance(threshold, float) else float(np.mean(threshold))}
        if run_dir is not None and self.is_main:
            atomic_write_text(run_dir / "test_metrics.json", json.dumps(test_metrics, indent=2))
            atomic_write_text(run_dir / "valid_metrics.json", json.dumps(valid.metrics, indent=2))
            save_export(run_dir / "export", model, export_meta(self.cfg, model, store, threshold))
        self.fabric.barrier()
        self.print(f"[bold green]test[/] (best epoch {state.best_epoch}, threshold "
                   f"{_fmt_threshold(threshold)}): {format_metrics(test.metrics)}")
        return FitResult(run_dir, state.best_epoch, float(state.best_score), threshold, valid.metrics,
                         test_metrics, state.history)

    # -- files
    def _save(self, path: Path, model, optimizer, scheduler, state: _TrainState, spec, keep_prev=True) -> None:
        save_training_state(path, {
            "model_name": model.name,
            "labels": list(spec.labels),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(),
            "train_state": state.to_dict(),
            "config": self.cfg.model_dump(mode="json"),
        }, keep_previous=keep_prev)

    def _restore(self, path: Path, model, optimizer, scheduler, store: FeatureStore) -> _TrainState:
        ckpt = load_training_state(path, model.name, store.labels)
        load_state_into(model, ckpt["model"], path)  # a clear error for another config's weights
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"])
        state = _TrainState.from_dict(ckpt["train_state"])
        best = path.with_name("best.ckpt")
        if best.exists():
            state.best_weights = load_training_state(best, model.name, store.labels)["model"]
        return state

    def _write_run_files(self, run_dir: Path, store: FeatureStore) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", to_yaml(self.cfg))
        atomic_write_text(run_dir / "env.json", json.dumps(environment(self.fabric, self.cfg, store), indent=2))

    def _log_tensorboard(self, run_dir: Path, epoch: int, *rows: dict) -> None:
        """Optional second logger (`train.logger: tensorboard`); CSV is always written."""
        if self.cfg.train.logger != "tensorboard":
            return
        if getattr(self, "_tb", None) is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                from mmerkit.errors import ConfigError

                raise ConfigError("train.logger=tensorboard needs the tensorboard package: "
                                  "pip install 'mmerkit[tensorboard]'") from None
            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        for row in rows:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self._tb.add_scalar(f"{row['split']}/{k}", v, epoch)
        self._tb.flush()

    @staticmethod
    def _write_metrics_csv(run_dir: Path, history: list[dict]) -> None:
        keys: list[str] = []
        for row in history:
            keys += [k for k in row if k not in keys]
        lines = [keys] + [[_csv_value(row.get(k, "")) for k in keys] for row in history]
        import io

        buf = io.StringIO()
        csv.writer(buf).writerows(lines)
        atomic_write_text(run_dir / "metrics.csv", buf.getvalue())


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


def choose_threshold(mode, default: float, labels: np.ndarray, probs: np.ndarray):
    """The prediction threshold, chosen on VALIDATION data only: a float or a per-label list."""
    if mode == "default":
        return float(default)
    if mode == "search":
        return float(search_threshold(labels, probs, mode="global"))
    if mode == "per-label":
        return [float(x) for x in search_threshold(labels, probs, mode="per-label")]
    return float(mode)


def export_meta(cfg: RunConfig, model: MMERModel, store: FeatureStore, threshold) -> dict:
    from mmerkit.models.base import build_model_config

    params = build_model_config(model.name, cfg.model).model_dump(mode="json")
    return {"model_name": model.name, "model": params, "spec": store.spec().to_dict(),
            "labels": store.labels, "threshold": threshold, "run_config": cfg.model_dump(mode="json"),
            "mmerkit_version": __version__, "data_source": store.meta.get("source", "")}


def environment(fabric: Fabric, cfg: RunConfig, store: FeatureStore) -> dict:
    import lightning_fabric

    return {"mmerkit": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "lightning_fabric": lightning_fabric.__version__, "numpy": np.__version__,
            "platform": platform.platform(), "seed": cfg.train.seed, "world_size": fabric.world_size,
            "device": str(fabric.device), "precision": cfg.train.precision,
            "cuda": torch.version.cuda if torch.cuda.is_available() else None,
            "store": str(store.path), "store_name": store.name, "splits": store.splits,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": platform.node(), "pid": os.getpid()}


def _output_field(out, key: str) -> torch.Tensor:
    if key == "modality_label_scores":
        return out.modality_label_scores
    if key.startswith("features/"):
        return out.features[key.split("/", 1)[1]]
    return getattr(out, key)


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _csv_value(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def _fmt_threshold(t) -> str:
    return f"{t:.2f}" if isinstance(t, float) else "per-label"


def _console(enabled: bool):
    if not enabled:
        return None
    from rich.console import Console

    return Console(stderr=False)


class _progress:
    """A rich progress bar for one epoch (rank 0 only)."""

    def __init__(self, console, description: str, total: int):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(),
                            console=console, transient=True)
        self.task = self.bar.add_task(description, total=total, loss=float("nan"))
        self.bar.start()

    def advance(self, loss: float) -> None:
        self.bar.update(self.task, advance=1, loss=loss)

    def close(self) -> None:
        self.bar.stop()
