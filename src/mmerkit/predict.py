"""Inference from an export directory, with no training code and no pickle, and the one
prediction loop (`forward_batches`) that the engine's validation and test, `Predictor`, the
plots and the media path all run.

`Predictions.scores` holds the model's modality-to-label scores (N, M, L) where it has them
(CARAT, RAMer, the classic models), None otherwise; `top_modality` is their argmax over M.

Example:
    >>> p = Predictor.from_pretrained("runs/carat_synthetic_seed1/export")   # doctest: +SKIP
    >>> res = p.predict("store", split="test")                               # doctest: +SKIP
    >>> res.label_sets[0], res.probs.shape                                   # doctest: +SKIP
    (['happy'], (600, 6))
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmerkit.data.batch import Batch, StoreDataset, collate
from mmerkit.data.store import DataSpec, FeatureStore
from mmerkit.errors import ConfigError, DataError
from mmerkit.export import Export
from mmerkit.metrics import binarize
from mmerkit.models.base import Gather, MMERModel


@dataclass
class Predictions:
    ids: list[str]
    labels: list[str]
    probs: np.ndarray  # (N, L)
    predicted: np.ndarray  # (N, L) uint8
    top_modality: np.ndarray | None = None  # (N, L) index of the modality with the strongest evidence
    modalities: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)
    scores: np.ndarray | None = None  # (N, M, L) modality_label_scores, where the model has them
    present: np.ndarray | None = None  # (N, M) bool: the sample has the modality (>= 1 step)

    @property
    def label_sets(self) -> list[list[str]]:
        return [[self.labels[j] for j in np.flatnonzero(row)] for row in self.predicted]

    @staticmethod
    def _column(label: str) -> str:
        """A label's probability column is its name, unless that clashes with a fixed column."""
        return f"p_{label}" if label in ("id", "labels", "modalities") else label

    def rows(self, joined: bool = True) -> list[dict]:
        """One dict per sample. `labels` is the predicted set; `modalities` (models with
        modality-to-label scores) gives, for each predicted label, the modality with the strongest
        evidence, as `label:modality`. Both are `;`-joined strings (CSV) or lists (`joined=False`)."""
        out = []
        for i, sid in enumerate(self.ids):
            labels = self.label_sets[i]
            row = {"id": sid, **{self._column(name): float(self.probs[i, j]) for j, name in enumerate(self.labels)},
                   "labels": ";".join(labels) if joined else labels}
            if self.top_modality is not None:
                top = [f"{self.labels[j]}:{self.modalities[self.top_modality[i, j]]}"
                       for j in np.flatnonzero(self.predicted[i])]
                row["modalities"] = ";".join(top) if joined else top
            out.append(row)
        return out

    def save(self, path: str | Path) -> Path:
        """CSV (one row per sample: id, one probability column per label, the label set) or JSONL
        (the same keys, with `labels` and `modalities` as lists)."""
        path = check_output_suffix(path)
        rows = self.rows(joined=path.suffix.lower() != ".jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            with path.open("w", newline="") as f:
                # "\n": the csv module's default "\r\n" puts a CR on every line for Unix tools
                w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["id"], lineterminator="\n")
                w.writeheader()
                w.writerows(rows)
        return path


@dataclass
class Timeline:
    """Emotions over time (`Predictor.predict_timeline`): one row per window.

    starts / ends: (N,) seconds; probs: (N, L), NaN for a window with no modality at all;
    predicted: (N, L) uint8; modality: each window's most relevant modality (for its most
    probable predicted label, else its most probable label), None without a prediction;
    missing: the modalities each window lacks (no face, no words, no audio track);
    transcript: the words recognised in each window.
    """

    labels: list[str]
    starts: np.ndarray
    ends: np.ndarray
    probs: np.ndarray
    predicted: np.ndarray
    modality: list[str | None]
    missing: list[list[str]]
    transcript: list[str]

    @classmethod
    def from_rows(cls, rows: list[dict], labels: list[str]) -> Timeline:
        probs = np.array([[np.nan if r[lab] is None else r[lab] for lab in labels] for r in rows],
                         np.float64).reshape(len(rows), len(labels))
        predicted = np.array([[lab in r["labels"] for lab in labels] for r in rows], np.uint8).reshape(probs.shape)
        return cls(list(labels), np.array([r["start"] for r in rows], np.float64),
                   np.array([r["end"] for r in rows], np.float64), probs, predicted,
                   [r["modality"] for r in rows], [list(r["missing"]) for r in rows], [r["transcript"] for r in rows])

    def rows(self, joined: bool = True) -> list[dict]:
        """One dict per window: start, end, a probability column per label (empty / None where
        the window has nothing to predict from), labels (the predicted set), modality, missing,
        transcript; lists are `;`-joined strings with `joined` (CSV)."""
        out = []
        for i in range(len(self.starts)):
            labels = [lab for j, lab in enumerate(self.labels) if self.predicted[i, j]]
            probs = {Timeline._column(lab): (None if np.isnan(p) else round(float(p), 4))
                     for lab, p in zip(self.labels, self.probs[i])}
            out.append({"start": float(self.starts[i]), "end": float(self.ends[i]), **probs,
                        "labels": ";".join(labels) if joined else labels, "modality": self.modality[i],
                        "missing": ";".join(self.missing[i]) if joined else self.missing[i],
                        "transcript": self.transcript[i]})
        return out

    @staticmethod
    def _column(label: str) -> str:
        fixed = ("start", "end", "labels", "modality", "missing", "transcript")
        return f"p_{label}" if label in fixed else label

    def save(self, path: str | Path) -> Path:
        """CSV (one row per window) or JSONL (lists kept as lists)."""
        path = check_output_suffix(path)
        jsonl = path.suffix.lower() == ".jsonl"
        rows = self.rows(joined=not jsonl)
        path.parent.mkdir(parents=True, exist_ok=True)
        if jsonl:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            return path
        fields = ["start", "end", *map(self._column, self.labels), "labels", "modality", "missing", "transcript"]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        return path


def top_present_modality(scores: np.ndarray | None, present: np.ndarray) -> np.ndarray | None:
    """(N, L) index of each label's most relevant modality among those the sample HAS: an
    absent modality's score (whatever the model gives it) never wins. None without scores."""
    if scores is None:
        return None
    return np.where(present[:, :, None], scores, -np.inf).argmax(1)


def check_output_suffix(path: str | Path) -> Path:
    """Predictions are written as .csv or .jsonl; any other name is refused before any work is done
    (a CSV under a .txt name would be a silent surprise)."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise ConfigError(f"--out {path}: predictions are written as .csv or .jsonl; "
                          f"name the file {path.with_suffix('.csv').name} or {path.with_suffix('.jsonl').name}")
    if path.is_dir():
        raise ConfigError(f"--out {path} is a directory; give a file name ending in .csv or .jsonl")
    return path


# ----------------------------------------------------------------------------- the prediction loop


@dataclass
class Forward:
    """What `forward_batches` returns, numpy, one row per sample in the batches' order (in split
    order when gathered from several processes)."""

    index: np.ndarray  # (N,) row of each sample in its split
    probs: np.ndarray  # (N, L)
    labels: np.ndarray  # (N, L) uint8
    present: np.ndarray  # (N, M) bool: modality m has at least one valid step
    modalities: tuple[str, ...]
    scores: np.ndarray | None = None  # (N, M, L) with keep "scores", where the model returns them
    features: dict[str, np.ndarray] = field(default_factory=dict)  # with keep "features"




@torch.no_grad()
def forward_batches(model: MMERModel, batches: Iterable[Batch], *, device: torch.device | str | None = None,
                    keep: Sequence[str] = ("scores",), drop_modality: str | None = None,
                    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
                    gather: Gather | None = None) -> Forward:
    """The one prediction loop: `model` in eval mode over `batches`, outputs collected as numpy.

    Used by training (validation / test), `Predictor`, the plots and the media path. `keep`
    chooses the optional outputs: "scores" (modality_label_scores) and "features" (every
    ModelOutput.features entry). `drop_modality` removes a modality from every batch
    (`Batch.without`). `gather` is an all-gather over processes (`Engine.gather`); with it each
    process passes its shard and every process gets the whole split, in split order.

    Example:
        >>> out = forward_batches(model, [batch], keep=("scores", "features"))   # doctest: +SKIP
        >>> out.probs.shape, out.scores.shape                                    # doctest: +SKIP
        ((32, 6), (32, 3, 6))
    """
    device = torch.device(device) if device is not None else _model_device(model)
    context = autocast or contextlib.nullcontext
    was_training = model.training
    model.eval()

    def step(batch: Batch) -> dict[str, Tensor]:
        batch = batch.to(device)
        if drop_modality is not None:
            batch = batch.without(drop_modality)
        with context():
            out = model(batch)
        # present as uint8: every collective backend (gloo included) gathers it
        rows = {"index": batch.index, "probs": out.probs.float(), "labels": batch.labels,
                "present": batch.present.to(torch.uint8)}
        if "scores" in keep and out.modality_label_scores is not None:
            rows["scores"] = out.modality_label_scores.float()
        if "features" in keep:
            rows.update({f"features/{k}": v.float() for k, v in out.features.items()})
        return rows

    L, M = model.spec.num_labels, len(model.spec.modality_names)
    # what a process without a single row contributes (n < world): the same columns, 0 rows
    empty = {"probs": torch.zeros(0, L), "labels": torch.zeros(0, L), "present": torch.zeros(0, M, dtype=torch.uint8)}
    try:
        cols = collect_rows(step, batches, gather, empty=empty)
    finally:
        model.train(was_training)
    n = len(cols["index"])
    scores = cols.get("scores")
    return Forward(index=cols["index"].astype(np.int64), probs=cols["probs"],
                   labels=cols["labels"].astype(np.uint8), present=cols["present"].astype(bool),
                   modalities=tuple(model.spec.modality_names),
                   scores=scores if scores is not None and len(scores) == n else None,
                   features={k.split("/", 1)[1]: v for k, v in cols.items() if k.startswith("features/")})


def collect_rows(step: Callable[[Batch], dict[str, Tensor]], batches: Iterable[Batch],
                 gather: Gather | None = None, empty: dict[str, Tensor] | None = None) -> dict[str, np.ndarray]:
    """Concatenate `step(batch)` (a dict of per-sample tensors, with "index") over the batches;
    with `gather`, over every process too, ordered by "index". The loop of `forward_batches`,
    also used for the pooled features closed-form models fit on. `empty`: the 0-row columns of
    a process that gets no batch, so that it joins the same all-gathers as the others."""
    chunks: dict[str, list[Tensor]] = {}
    for batch in batches:
        for k, v in step(batch).items():
            chunks.setdefault(k, []).append(v)
    if "index" not in chunks:  # no batch on this process (a split smaller than the process count)
        chunks = {"index": [torch.zeros(0, dtype=torch.long)], **{k: [v] for k, v in (empty or {}).items()}}
    local = {k: torch.cat(v) for k, v in chunks.items()}
    if gather is not None:
        local = _gather_rows(local, gather)
    return {k: v.cpu().numpy() for k, v in local.items()}


def _gather_rows(local: dict[str, Tensor], gather: Gather) -> dict[str, Tensor]:
    """Rows from every process, in index order. Shards differ in length by at most a batch, so
    each is padded to the longest (index -1) and the padding dropped after the all-gather.
    Every process must hold the same keys (an empty shard has none: avoid empty shards)."""
    index = local["index"]
    n_max = int(gather(index.new_tensor([index.shape[0]])).max())
    out = {}
    for k, v in local.items():
        pad = n_max - v.shape[0]
        fill = -1 if k == "index" else 0
        v = torch.cat([v, v.new_full((pad, *v.shape[1:]), fill)])
        out[k] = gather(v)
    keep = out["index"] >= 0
    order = torch.argsort(out["index"][keep])
    return {k: v[keep][order] for k, v in out.items()}


def _model_device(model: torch.nn.Module) -> torch.device:
    # classic models (BR / CC / LP) hold only buffers
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def split_batches(store: FeatureStore, split: str, indices: Sequence[int] | None = None,
                  modalities: Sequence[str] | None = None, batch_size: int = 256) -> Iterable[Batch]:
    """Batches of `indices` (default: all rows) of a store split, in order (no DataLoader)."""
    ds = StoreDataset(store, split, tuple(modalities) if modalities else None)
    idx = list(range(len(ds))) if indices is None else [int(i) for i in indices]
    for start in range(0, len(idx), batch_size):
        yield collate(ds.__getitems__(idx[start:start + batch_size]))


class Predictor:
    """A trained model plus its labels and validation-chosen threshold(s)."""

    def __init__(self, model: MMERModel, meta: dict, device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.meta = meta
        self.device = torch.device(device)
        self.spec = DataSpec.from_dict(meta["spec"])
        self.labels = list(meta["labels"])
        self.threshold = meta["threshold"]

    @classmethod
    def from_pretrained(cls, export_dir: str | Path, device: str = "cpu") -> Predictor:
        """Load an export directory, or a run directory (its `export/`), as `mmer predict` does."""
        export = Export(export_dir)
        return cls(export.model(), export.meta, device)

    # -- inputs
    def _check_store(self, store: FeatureStore) -> None:
        want, got = self.spec.modalities, store.modalities
        if want != got:
            missing = [m for m in want if m not in got]
            extra = [m for m in got if m not in want]
            dims = [f"{m}: model {want[m]}, data {got[m]}" for m in want if m in got and want[m] != got[m]]
            detail = "; ".join(filter(None, [f"missing modalities {missing}" if missing else "",
                                             f"unknown modalities {extra}" if extra else "",
                                             f"dims differ ({', '.join(dims)})" if dims else ""]))
            raise DataError(f"{store.path} does not match the model's inputs ({detail}); the model expects "
                            f"{want}. Convert the data with the same features as the training store.")
        from mmerkit.extract.identity import check_same_extractors

        # same shapes are not the same features: stores from `mmer extract` name their extractors
        check_same_extractors(self.meta.get("extractors"), store.meta.get("extractors"),
                              "the model's training store", str(store.path))

    def _run(self, batches: Iterable[Batch]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        out = forward_batches(self.model, batches, device=self.device, keep=("scores",))
        return out.probs, out.scores, out.present

    def predict(self, inputs: str | Path | FeatureStore | Mapping[str, np.ndarray] | Batch,
                split: str = "test", batch_size: int = 256) -> Predictions:
        """Predict a store split, a Batch, or arrays {modality: (N, T, D) or None} (+ `<m>_len`:
        each sample's valid steps, 0 = the sample lacks it). The batch axis comes first; a 2-D
        array is refused as ambiguous (one sample: `predict_one`)."""
        if isinstance(inputs, Batch):
            ids = [str(i) for i in inputs.index.tolist()]
            p, s, present = self._run([inputs])
        elif isinstance(inputs, Mapping):
            batch = self._arrays_to_batch(inputs)
            ids = [str(i) for i in range(batch.size)]
            p, s, present = self._run([batch])
        else:
            store = inputs if isinstance(inputs, FeatureStore) else FeatureStore(inputs)
            self._check_store(store)
            p, s, present = self._run(split_batches(store, split, modalities=tuple(self.spec.modalities),
                                                    batch_size=batch_size))
            sp = store.split(split)
            ids = [sp.sample_id(i) for i in range(len(sp))]
        pred = binarize(p, np.asarray(self.threshold))
        return Predictions(ids, self.labels, p, pred, top_present_modality(s, present),
                           tuple(self.spec.modalities), scores=s, present=present)

    def _arrays_to_batch(self, arrays: Mapping[str, np.ndarray | None]) -> Batch:
        """The many-sample form (mmerkit.arrays.batch_arrays) checked against the model's inputs."""
        from mmerkit.arrays import batch_arrays

        want = dict(self.spec.modalities)
        unknown = [k for k in arrays if k not in want and not k.endswith("_len") and k != "ids"]
        if unknown:
            raise DataError(f"input has unknown modalities {unknown}; the model expects {list(want)}")
        for m in want:
            if m not in arrays:
                raise DataError(f"input has no {m!r} features; the model expects {want} (pass {m!r}: None "
                                f"for samples without {m})")
        n, xs, lens = batch_arrays(arrays)
        items: dict = {"modalities": tuple(want)}
        for m, dim in want.items():
            x = xs[m] if xs[m] is not None else np.zeros((n, 1, dim), np.float32)
            if x.shape[-1] != dim:
                raise DataError(f"input {m!r} has shape {x.shape}; expected (N, T, {dim})")
            if not np.isfinite(x).all():
                raise DataError(f"input {m!r} contains NaN/inf; clean it first")
            if x.shape[1] == 0:
                raise DataError(f"input {m!r} has shape {x.shape}: no time steps (T = 0); give at least one "
                                f"step, or None / lengths {m}_len = 0 for samples that lack {m!r}")
            items[f"x:{m}"], items[f"len:{m}"] = x, lens[m]
        empty = np.flatnonzero(~np.stack([lens[m] > 0 for m in want]).any(0))
        if empty.size:
            raise DataError(f"input sample {int(empty[0])} has length 0 in every modality ({empty.size} such "
                            "samples): there is nothing to predict from; drop those samples")
        items["labels"] = np.zeros((n, len(self.labels)), np.float32)
        items["index"] = np.arange(n)
        return collate(items)

    def predict_one(self, sample: Mapping[str, np.ndarray | None]) -> Predictions:
        """Predict ONE sample: {modality: (T, D) array, (D,) vector, or None when missing}.
        Many samples go to `predict` with a batch axis first: {modality: (N, T, D)}."""
        from mmerkit.arrays import sample_arrays

        return self.predict(sample_arrays(sample))

    # -- media (mmerkit.extract): the export's extractors on new clips
    def predict_media(self, media: str | Path | Sequence[str | Path | None] | None = None,
                      transcripts: str | Sequence[str | None] | None = None, *,
                      manifest: str | Path | None = None, batch_size: int = 256,
                      progress: Any = None) -> Predictions:
        """Predict from video/audio files (or a manifest CSV of them) with the extractors the
        training store was made with (read from the export); features made by other extractors
        are refused. `transcripts`: one per file (None: speech recognition, as configured at
        extraction). Returns Predictions with ids (file stems or manifest ids), every label's
        probability, the emotion set and each label's most relevant modality;
        `extra["transcripts"]` holds the text each clip was read as, `extra["recognised"]` the
        clips whose text came from speech recognition; a manifest with labels also gives
        `extra["metrics"]` (compute_metrics of the predicted sets against them). `progress`: a
        `rich.progress.track`-like wrapper of the per-clip feature extraction.

        Example:
            >>> p = Predictor.from_pretrained("runs/carat_clips_seed1/export")   # doctest: +SKIP
            >>> p.predict_media(["a.mp4"], transcripts=["I can't believe it"]).rows()  # doctest: +SKIP
        """
        from mmerkit.extract.media_predict import media_inputs, media_request

        req = media_request(media, transcripts, manifest)
        ids, arrays, notes = media_inputs(self.meta, req["media"], transcripts=req["transcripts"],
                                          starts=req["starts"], ends=req["ends"], ids=req["ids"],
                                          dialogues=req["dialogues"], origin="the export", progress=progress)
        ids, arrays, not_predicted = self._without_empty_samples(ids, arrays)
        preds = self.predict(arrays, batch_size=batch_size)
        preds.ids = ids
        preds.extra["not_predicted"] = not_predicted
        if preds.top_modality is None:
            preds.top_modality = self._occlusion_top_modality(arrays, preds.probs)
        preds.extra.update(notes)
        if manifest is not None:
            self._score_against_manifest(preds, manifest, req["ids"])
        return preds

    def predict_timeline(self, path: str | Path, *, window: float = 4.0, hop: float = 2.0,
                         progress: Any = None) -> Timeline:
        """Emotions over time in one long recording: one row per window [k * hop, k * hop + window)
        seconds (the last one ends with the file) with every label's probability, the predicted
        set, the most relevant modality and the modalities the window lacks (no face, no words).
        The file is decoded once and each extractor runs once over it (mmerkit.extract.timeline);
        memory does not grow with its length. `progress(seconds)` is called with the media time
        reached after each batch of windows.

        Example:
            >>> tl = Predictor.from_pretrained("runs/carat_clips_seed1/export").predict_timeline(
            ...     "interview.mp4", window=4, hop=2)                                  # doctest: +SKIP
            >>> tl.save("timeline.csv"); tl.starts[:3]                                # doctest: +SKIP
            array([0., 2., 4.])
        """
        rows = []
        for batch in self.iter_timeline(path, window=window, hop=hop):
            rows.extend(batch)
            if progress is not None and batch:
                progress(batch[-1]["end"])
        return Timeline.from_rows(rows, self.labels)

    def iter_timeline(self, path: str | Path, *, window: float = 4.0, hop: float = 2.0,
                      batch_windows: int = 8) -> Iterator[list[dict]]:
        """`predict_timeline` as it goes: lists of row dicts (see `Timeline.rows(joined=False)`),
        in time order, each list as soon as its windows are predicted (the server streams them)."""
        from mmerkit.extract.featurize import featurizer
        from mmerkit.extract.media_predict import _check_media_exist
        from mmerkit.extract.timeline import check_window, timeline_windows

        check_window(window, hop)
        _check_media_exist([path], "", "")
        fz = featurizer(self.meta)
        pending = []
        for w in timeline_windows(fz, path, window=window, hop=hop):
            pending.append(w)
            if len(pending) >= batch_windows:
                yield self._window_rows(pending, fz.dims)
                pending = []
        if pending:
            yield self._window_rows(pending, fz.dims)

    def _window_rows(self, windows: list, dims: Mapping[str, int]) -> list[dict]:
        """Rows of a batch of timeline windows; windows with no modality at all get no prediction."""
        from mmerkit.extract.media_predict import samples_arrays

        rows = [{"start": round(w.start, 3), "end": round(w.end, 3), **{lab: None for lab in self.labels},
                 "labels": [], "modality": None, "missing": w.missing, "transcript": w.transcript}
                for w in windows]
        some = [i for i, w in enumerate(windows) if len(w.missing) < len(w.features)]
        if not some:
            return rows
        ids = [f"{windows[i].start:g}" for i in some]
        notes: dict[str, Any] = {"truncated": []}
        _, arrays = samples_arrays(self.meta, ids, [windows[i].features for i in some], dims, None, notes)
        preds = self.predict(arrays)
        top = preds.top_modality if preds.top_modality is not None else self._occlusion_top_modality(arrays, preds.probs)
        for k, i in enumerate(some):
            probs = preds.probs[k]
            chosen = np.flatnonzero(preds.predicted[k])
            lead = chosen[np.argmax(probs[chosen])] if chosen.size else int(np.argmax(probs))
            rows[i].update({lab: round(float(probs[j]), 4) for j, lab in enumerate(self.labels)})
            rows[i]["labels"] = [self.labels[j] for j in chosen]
            rows[i]["modality"] = preds.modalities[int(top[k, lead])]
        return rows

    def _score_against_manifest(self, preds: Predictions, manifest: str | Path, item_ids: list[str]) -> None:
        """Metrics of the predictions where the manifest has labels (one sample per row; a
        dialogue model's samples are dialogues, which have no labels of their own)."""
        from mmerkit.extract.media_predict import manifest_labels
        from mmerkit.metrics import compute_metrics

        y = manifest_labels(manifest, self.labels)
        row = {sid: k for k, sid in enumerate(item_ids)}
        if y is None or not all(sid in row for sid in preds.ids):
            return
        preds.extra["metrics"] = compute_metrics(y[[row[sid] for sid in preds.ids]], preds.predicted, self.labels)

    def _without_empty_samples(self, ids: list[str], arrays: dict[str, np.ndarray]
                               ) -> tuple[list[str], dict[str, np.ndarray], dict[str, str]]:
        """Clips in which none of the model's modalities is present (a text-only model and a clip
        without transcript or recognised speech; a silent, faceless video) cannot be answered:
        they are left out and named with the reason ({id: reason}) instead of getting an answer."""
        mods = list(self.spec.modalities)
        present = np.stack([np.asarray(arrays[f"{m}_len"]) > 0 for m in mods], 1)
        empty = np.flatnonzero(~present.any(1))
        why = {"text": "no transcript and no speech recognised", "audio": "no audio track",
               "visual": "no face found"}
        reasons = {ids[i]: f"the model reads {', '.join(mods)} and this clip has none of them ("
                   + "; ".join(why.get(m, f"no {m}") for m in mods) + ")" for i in empty}
        if len(empty) == len(ids):
            first = next(iter(reasons))
            raise DataError(f"nothing to predict: {first}: {reasons[first]}"
                            + (f" ({len(empty) - 1} more such clips)" if len(empty) > 1 else ""))
        if not len(empty):
            return ids, arrays, {}
        keep = np.flatnonzero(present.any(1))
        kept = {k: np.asarray(v)[keep] for k, v in arrays.items()}
        return [ids[i] for i in keep], kept, reasons

    def _occlusion_top_modality(self, arrays: Mapping[str, np.ndarray], probs: np.ndarray) -> np.ndarray:
        """For models without modality-to-label scores: the modality whose removal lowers each
        label's probability most (modalities a sample lacks never win)."""
        mods = list(self.spec.modalities)
        present = np.stack([np.asarray(arrays[f"{m}_len"]) > 0 for m in mods], 1)  # (N, M)
        drops = np.full((*present.shape, probs.shape[1]), -np.inf)
        for j, m in enumerate(mods):
            others = np.delete(present, j, axis=1).any(1)
            if not others.any():
                continue
            masked = {**arrays, f"{m}_len": np.where(others, 0, arrays[f"{m}_len"])}
            without = self.predict(masked).probs
            drops[:, j] = np.where((present[:, j] & others)[:, None], probs - without, -np.inf)
        only = present.sum(1) == 1  # a sole modality is the most relevant one by definition
        drops[only] = np.where(present[only][:, :, None], 0.0, -np.inf)
        return drops.argmax(1)
