"""`mmer extract`: a media manifest -> an ordinary FeatureStore, resumable, in parallel, sharded.

Work layout: every item is extracted into ``STORE.parts/items/<name>.npz`` (written to a
temporary file and renamed, so a file there is always complete). A killed run, started again,
skips the items whose file holds features of the same row (id, media, cut, transcript, file
size and time) and the same extraction configuration, and extracts the rest. An item that
fails (missing or unreadable file, no audio track, zero length, start after end, no words to
align to, an extractor error) leaves ``items/<name>.fail.json`` instead; the run goes on unless
``strict``, and ``failures.csv`` (in STORE.parts and in the store) lists every failure with its
reason. The store itself is written (atomically, from complete items only) after the last item.

Shards: ``shard="2/4"`` extracts only the items whose id hashes to shard 2 of 4 and writes no
store. When every shard is done, ``merge=True`` (CLI ``--merge``) builds the store from
STORE.parts plus any other parts directories (``parts=[...]``, e.g. copied back from other
machines) without extracting anything; a run without ``shard`` does the same after extracting
whatever is still missing.

Example:
    >>> res = run_extract("clips/manifest.csv", "stores/clips", workers=2)   # doctest: +SKIP
    >>> res.store.modalities, res.failed                                     # doctest: +SKIP
    ({'text': 384, 'audio': 42, 'visual': 52}, 0)
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing as mp
import os
import queue
import re
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmerkit.data.custom import SPLITS
from mmerkit.data.dialogue import build_dialogues
from mmerkit.data.padding import pad_ragged
from mmerkit.data.store import FORMAT, FeatureStore, SplitArrays, write_store
from mmerkit.errors import ConfigError, DataError, MMERError
from mmerkit.extract.config import ExtractConfig, make_config
from mmerkit.extract.featurize import pooled_utterance
from mmerkit.extract.manifest import Manifest, MediaItem, read_media_manifest
from mmerkit.files import atomic_write_bytes
from mmerkit.progress import ProgressBar

FAILURE_COLUMNS = ("id", "line", "media", "start", "end", "reason")


@dataclass
class ExtractResult:
    """What a run did. `store` is None for a shard run (or when nothing could be extracted)."""

    store: FeatureStore | None
    out: Path
    parts: Path
    selected: int  # items of the manifest this run is responsible for (its shard)
    extracted: int  # extracted by this run
    skipped: int  # already complete from an earlier run
    failed: int
    failures_csv: Path
    manifest: Manifest
    config: ExtractConfig
    warnings: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- item files


def item_name(item_id: str) -> str:
    """A file-system-safe, collision-free file stem for a sample id."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", item_id)[:48].strip(".") or "item"
    return f"{safe}-{hashlib.sha1(item_id.encode()).hexdigest()[:10]}"


def write_item(items_dir: Path, item: MediaItem, fingerprint: str, feats: dict[str, np.ndarray],
               record: dict[str, Any]) -> Path:
    """Write one item's features atomically; removes an earlier failure record of it."""
    buf = io.BytesIO()
    meta = {"id": item.id, "key": item.key(), "row_key": item.row_key(), "config": fingerprint, **record}
    np.savez(buf, __meta__=np.array(json.dumps(meta)), **{f"x_{m}": x for m, x in feats.items()})
    path = items_dir / f"{item_name(item.id)}.npz"
    atomic_write_bytes(path, buf.getvalue())
    (items_dir / f"{item_name(item.id)}.fail.json").unlink(missing_ok=True)
    return path


def write_failure(items_dir: Path, item: MediaItem, reason: str) -> None:
    """Record a failed item atomically; removes stale features of it."""
    rec = {"id": item.id, "line": item.line, "media": "" if item.media is None else str(item.media),
           "start": "" if item.start is None else item.start, "end": "" if item.end is None else item.end,
           "reason": reason, "key": item.key(), "row_key": item.row_key()}
    atomic_write_bytes(items_dir / f"{item_name(item.id)}.fail.json", json.dumps(rec).encode())
    (items_dir / f"{item_name(item.id)}.npz").unlink(missing_ok=True)


def read_item(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """(meta, features) of an item file, or None when it is unreadable (then it is redone)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["__meta__"]))
            feats = {k[2:]: z[k] for k in z.files if k.startswith("x_")}
    except (OSError, ValueError, KeyError, EOFError):
        return None
    return meta, feats


def _item_meta(path: Path) -> dict[str, Any] | None:
    """Only the meta of an item file (cheap: the feature arrays are not read)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["__meta__"]))
    except (OSError, ValueError, KeyError, EOFError):
        return None


def _is_done(items_dir: Path, item: MediaItem, fingerprint: str) -> bool:
    path = items_dir / f"{item_name(item.id)}.npz"
    if not path.exists():
        return False
    meta = _item_meta(path)
    return meta is not None and meta.get("key") == item.key() and meta.get("config") == fingerprint


# ----------------------------------------------------------------------------- one item


def process_item(item: MediaItem, config: ExtractConfig, items_dir: Path, fingerprint: str,
                 words: list | None) -> tuple[str, str, str]:
    """Extract one item into its file. Returns (id, "ok" | "failed" | "error", reason).

    "failed" is a problem of this item (recorded, the run goes on); "error" is a problem of the
    whole run (a missing package, a bad option), which stops it.
    """
    from mmerkit.extract.base import MediaError
    from mmerkit.extract.featurize import featurizer

    try:
        fz = featurizer(config)
        res = fz.featurize(item.media, transcript=item.transcript, start=item.start, end=item.end,
                           words=words, clip_id=item.id)
        record = {"extractors": fz.describe(), "asr": fz.asr_describe() if res.used_asr else None,
                  "used_asr": res.used_asr, "transcript": res.transcript, "duration": res.duration}
        write_item(items_dir, item, fingerprint, res.features, record)
        return item.id, "ok", ""
    except MediaError as e:
        write_failure(items_dir, item, str(e))
        return item.id, "failed", str(e)
    except MMERError as e:
        return item.id, "error", f"{type(e).__name__}: {e}"
    except Exception as e:  # an extractor or decoder bug on this file: record it, keep going
        reason = f"{type(e).__name__}: {e}".strip()
        write_failure(items_dir, item, reason)
        return item.id, "failed", reason


def _init_worker(plugins: list[str], threads: int) -> None:
    import torch

    skip_final_collection()
    torch.set_num_threads(threads)
    from mmerkit.extract.featurize import import_plugins

    import_plugins(plugins)


def skip_final_collection() -> None:
    """At this process's exit, skip the garbage collector's last passes over every object.

    A process that loaded torch, transformers, librosa and mediapipe holds millions of objects;
    the collections that interpreter shutdown runs over them took 3.6 s per process on this
    project's 2-core machine at load 8 (0.7 s with this), as long as a dozen short clips take.
    `gc.freeze()` run as an exit handler puts them out of the collector's sight; the memory goes
    back to the system anyway. Only for processes whose files are all written and closed by
    then (extraction writes each item atomically).
    """
    import atexit
    import gc

    atexit.register(gc.freeze)


# ----------------------------------------------------------------------------- the run


def run_fingerprint(cfg: ExtractConfig) -> str:
    """The configuration's fingerprint, plus the word-timing file's content when there is one
    (an edited timing file must not reuse features aligned to the old times)."""
    if not cfg.word_timings:
        return cfg.fingerprint()
    path = Path(cfg.word_timings)
    if not path.is_file():
        what = "is a folder, not a CSV file" if path.is_dir() else "does not exist"
        raise DataError(f"word-timing file {path} {what} (--word-timings)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashlib.sha256(f"{cfg.fingerprint()}{digest}".encode()).hexdigest()[:16]


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """"K/N" (K counts from 1) -> (K, N)."""
    if shard is None:
        return None
    if isinstance(shard, tuple):
        k, n = shard
    else:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
        if not m:
            raise ConfigError(f"--shard {shard!r}: expected K/N, e.g. 1/4 (K counts from 1)")
        k, n = int(m.group(1)), int(m.group(2))
    if not 1 <= k <= n:
        raise ConfigError(f"--shard {k}/{n}: K must be between 1 and N (K counts from 1; for a SLURM array "
                          "use $((SLURM_ARRAY_TASK_ID + 1))/N)")
    return k, n


def in_shard(item_id: str, shard: tuple[int, int] | None) -> bool:
    """Stable across runs and machines: the id's hash decides the shard, not its row."""
    if shard is None:
        return True
    k, n = shard
    return int(hashlib.sha1(item_id.encode()).hexdigest()[:12], 16) % n == k - 1


def parts_dir(out: str | Path) -> Path:
    """The work directory of a store: STORE.parts next to it."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def run_extract(manifest: str | Path, out: str | Path, *,
                config: ExtractConfig | dict[str, Any] | str | Path | None = None,
                label_names: Sequence[str] | str | None = None, split_seed: int = 0,
                empty_labels: str = "reject", workers: int = 1, shard: str | None = None,
                strict: bool = False, merge: bool = False, parts: Sequence[str | Path] = (),
                overwrite: bool = False, progress: bool = False,
                on_warning: Callable[[str], None] | None = None) -> ExtractResult:
    """Extract every item of `manifest` and write the FeatureStore `out` (see the module doc)."""
    cfg = make_config(config)
    shard_t = parse_shard(shard)
    if merge and shard_t is not None:
        raise ConfigError("--merge builds the store from finished shards; drop --shard")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: need at least 1")
    out = Path(out)
    man = read_media_manifest(manifest, label_names=label_names, split_seed=split_seed,
                              empty_labels=empty_labels,
                              media_required=cfg.audio is not None or cfg.visual is not None)
    for w in man.warnings:
        (on_warning or _warn)(w)
    level = _level(cfg, man)
    if shard_t is None:
        _check_out(out, overwrite)
    work = parts_dir(out)
    items_dir = work / "items"
    items_dir.mkdir(parents=True, exist_ok=True)
    fp = run_fingerprint(cfg)
    selected = [it for it in man.items if in_shard(it.id, shard_t)]
    todo = [] if merge else [it for it in selected if not _is_done(items_dir, it, fp)]
    timings = None
    if cfg.word_timings and todo:
        from mmerkit.extract.featurize import read_word_timings

        timings = read_word_timings(cfg.word_timings)
    failed = _extract_all(todo, cfg, items_dir, fp, timings, workers, strict, progress, man.path)
    dirs = [items_dir, *(_items_dir_of(Path(p)) for p in parts)]
    failures_csv = _write_failures_csv(work, man, dirs, merge)
    result = ExtractResult(None, out, work, len(selected), len(todo) - failed, len(selected) - len(todo),
                           len(_failure_records(man, dirs, merge)), failures_csv, man, cfg)
    if shard_t is not None:
        return result
    result.store = assemble_store(man, cfg, dirs, out, level=level, overwrite=overwrite,
                                  failures_csv=failures_csv, merge=merge)
    return result


def _warn(msg: str) -> None:
    import warnings

    warnings.warn(msg, stacklevel=3)


def _level(cfg: ExtractConfig, man: Manifest) -> str:
    if cfg.level == "dialogue" and not man.has_dialogues:
        raise ConfigError(f"level='dialogue' but {man.path} has no dialogue column")
    if cfg.level == "auto":
        return "dialogue" if man.has_dialogues else "utterance"
    return cfg.level


def _check_out(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise DataError(f"{out} already exists; pass --overwrite to replace it, or choose another --out")
    try:
        ours = json.loads((out / "meta.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours and not (out.is_dir() and not any(out.iterdir())):
        raise DataError(f"{out} exists and is not a FeatureStore; --overwrite only replaces a store")


def _items_dir_of(p: Path) -> Path:
    """Accept STORE.parts, STORE.parts/items, or STORE (whose STORE.parts is used)."""
    for cand in (p / "items", p, parts_dir(p) / "items"):
        if cand.is_dir() and cand.name == "items":
            return cand
    raise DataError(f"--parts {p}: no items/ directory there (expected a STORE.parts directory of a shard run)")


def _extract_all(todo: list[MediaItem], cfg: ExtractConfig, items_dir: Path, fp: str, timings,
                 workers: int, strict: bool, progress: bool, manifest_path: Path) -> int:
    """Extract `todo`; returns how many failed. Raises on a run-level error, or on the first
    failure with `strict`."""
    if not todo:
        return 0
    from mmerkit.extract.featurize import words_for

    jobs = [(it, words_for(timings, it.id, it.start)) for it in todo]
    by_id = {it.id: it for it in todo}
    failed = 0
    # until the first item is back the bar says what the wait is: every process loads the extractors
    helpers = workers - 1
    starting = (f"loading the extractors (here and in {helpers} helper process{'es' if helpers > 1 else ''})"
                if helpers and len(todo) > 1 else "loading the extractors")
    with ProgressBar(starting, len(todo), enabled=progress) as bar:
        for item_id, status, reason in _results(jobs, cfg, items_dir, fp, workers):
            bar.advance(description="extracting")
            if status == "ok":
                continue
            it = by_id[item_id]
            if status == "error":
                raise ConfigError(f"extraction stopped at {manifest_path}, line {it.line} (id {item_id!r}): "
                                  f"{reason}")
            failed += 1
            if strict:
                raise DataError(f"{manifest_path}, line {it.line} (id {item_id!r}): {reason}. --strict stops "
                                "here; fix the row or drop --strict to record failures in failures.csv")
    return failed


def _results(jobs, cfg: ExtractConfig, items_dir: Path, fp: str, workers: int) -> Iterable[tuple[str, str, str]]:
    """Results of `jobs` (item, words), each once.

    With `workers` > 1 this process extracts too, next to `workers` - 1 spawned helper
    processes: it would otherwise only wait, and it starts its extractors while the helpers
    still start their interpreters (several seconds, as long as a few dozen short clips take).
    A thread keeps the helpers fed from the same queue this process takes its items from, so
    whoever is free takes the next item. This process extracts in its main thread, as with one
    worker, so Ctrl+C stops the item in hand at once.
    """
    if workers == 1 or len(jobs) == 1:
        for it, words in jobs:
            yield process_item(it, cfg, items_dir, fp, words)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    todo = _SharedQueue(jobs)
    mine = todo.take()  # this process's first item: it is never left idle while helpers start
    helpers = ProcessPoolExecutor(max_workers=workers - 1, mp_context=mp.get_context("spawn"),
                                  initializer=_init_worker, initargs=(list(cfg.plugins), threads))
    # spawn: fork after torch/OpenMP threads have started can deadlock
    from_helpers: queue.SimpleQueue = queue.SimpleQueue()
    feeder = threading.Thread(target=_feed_helpers, daemon=True, name="mmer-extract-feeder",
                              args=(helpers, todo, 2 * (workers - 1), from_helpers,
                                    (cfg, items_dir, fp)))
    feeder.start()
    own_threads = None
    given = 0
    try:
        while mine is not None:
            while not from_helpers.empty():
                given += 1
                yield _unpack(from_helpers.get())
            if own_threads is None:  # torch loads here, after the helpers have been started
                own_threads = _set_torch_threads(threads)
            yield process_item(mine[0], cfg, items_dir, fp, mine[1])
            given += 1
            mine = todo.take()
        while given < len(jobs):
            given += 1
            yield _unpack(from_helpers.get())
    finally:
        todo.close()  # the feeder hands out nothing more
        helpers.shutdown(wait=True, cancel_futures=True)
        if own_threads is not None:
            _set_torch_threads(own_threads)


class _SharedQueue:
    """The jobs, taken one at a time by this process and by the helpers' feeder thread."""

    def __init__(self, jobs: list) -> None:
        self._jobs = iter(jobs)
        self._lock = threading.Lock()

    def take(self):
        with self._lock:
            return next(self._jobs, None)

    def close(self) -> None:
        with self._lock:
            self._jobs = iter(())


def _feed_helpers(helpers: ProcessPoolExecutor, todo: _SharedQueue, room: int, out: queue.SimpleQueue,
                  args: tuple) -> None:
    """Keep `room` jobs in flight in the helper processes; put each result (or the exception
    it raised) into `out`. Ends when the queue is empty and nothing is in flight."""
    cfg, items_dir, fp = args
    pending: set = set()
    try:
        while True:
            while len(pending) < room and (job := todo.take()) is not None:
                pending.add(helpers.submit(process_item, job[0], cfg, items_dir, fp, job[1]))
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                out.put((True, fut.result()))
    except BaseException as e:  # a helper died, or the run was stopped: the main thread decides
        out.put((False, e))


def _unpack(outcome: tuple[bool, Any]) -> tuple[str, str, str]:
    ok, value = outcome
    if not ok:
        raise value
    return value


def _set_torch_threads(threads: int) -> int:
    """This process extracts with as many torch threads as each helper; returns its own number
    (to be given back at the end)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    return before


# ----------------------------------------------------------------------------- failures


def _same_row(rec: dict[str, Any], it: MediaItem, merge: bool) -> bool:
    """Does an item file belong to this row? A merge of shards from other machines compares the
    row as written: there the media files have other paths and modification times."""
    return rec.get("key") == it.key() or (merge and rec.get("row_key") == it.row_key())


def _failure_records(man: Manifest, dirs: Sequence[Path], merge: bool = False) -> list[dict[str, Any]]:
    """The current failure record of every manifest item that has one (and no newer features)."""
    out = []
    for it in man.items:
        name = item_name(it.id)
        for d in dirs:
            f = d / f"{name}.fail.json"
            if f.exists() and not (d / f"{name}.npz").exists():
                try:
                    rec = json.loads(f.read_text())
                except (OSError, ValueError):
                    continue
                if _same_row(rec, it, merge):
                    out.append(rec)
                    break
    return out


def _write_failures_csv(work: Path, man: Manifest, dirs: Sequence[Path], merge: bool = False) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(FAILURE_COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(_failure_records(man, dirs, merge))
    path = work / "failures.csv"
    atomic_write_bytes(path, buf.getvalue().encode())
    return path


# ----------------------------------------------------------------------------- the store


def _collect(man: Manifest, dirs: Sequence[Path], fp: str, merge: bool):
    """Features of every complete item, in manifest order; errors for items never extracted."""
    feats: list[dict[str, np.ndarray] | None] = []
    records: list[dict[str, Any] | None] = []
    missing = []
    failed_ids = {r["id"] for r in _failure_records(man, dirs, merge)}
    for it in man.items:
        got = None
        for d in dirs:
            p = d / f"{item_name(it.id)}.npz"
            if p.exists():
                got = read_item(p)
                if got is not None and _same_row(got[0], it, merge) and got[0].get("config") == fp:
                    break
                got = None
        if got is None and it.id not in failed_ids:
            missing.append(it)
        feats.append(None if got is None else got[1])
        records.append(None if got is None else got[0])
    if missing:
        first = ", ".join(repr(it.id) for it in missing[:5])
        how = ("run the missing shards (or pass their STORE.parts with --parts)" if merge
               else "run the extraction again")
        raise DataError(f"{len(missing)} item(s) of {man.path} have no features yet ({first}); {how}")
    return feats, records


def _check_same_extractors(records: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Every item must come from identical extractors (a merge of shards from machines with
    different packages or model files would otherwise mix features silently)."""
    seen: dict[str, dict] = {}
    for rec in records:
        if rec is None:
            continue
        key = json.dumps(rec["extractors"], sort_keys=True)
        seen.setdefault(key, rec)
    if len(seen) > 1:
        a, b = list(seen.values())[:2]
        raise DataError(f"items {a['id']!r} and {b['id']!r} were extracted by different extractor versions or "
                        "model files (e.g. shards on machines with other packages); re-extract with one setup")
    return next(iter(seen.values()))["extractors"] if seen else {}


def assemble_store(man: Manifest, cfg: ExtractConfig, dirs: Sequence[Path], out: Path, *, level: str,
                   overwrite: bool, failures_csv: Path | None, merge: bool = False) -> FeatureStore:
    """Write the FeatureStore from the complete items (failed ones are left out)."""
    feats, records = _collect(man, dirs, run_fingerprint(cfg), merge)
    ok = [i for i, f in enumerate(feats) if f is not None]
    if not ok:
        raise DataError(f"no item of {man.path} could be extracted; see {failures_csv} for the reasons")
    describe = _check_same_extractors(records)
    dims = {m: int(d["dim"]) for m, d in describe.items()}
    if level == "dialogue":
        splits, steps = _dialogue_splits(man, feats, dims, cfg.max_len)
    else:
        splits, steps = _utterance_splits(man, feats, dims, cfg.max_len), None
    empty = [s for s in SPLITS if s not in splits]
    if empty:
        raise DataError(f"after leaving out {len(feats) - len(ok)} failed item(s), split(s) {empty} have no "
                        f"sample; fix the failures ({failures_csv}) or give those splits more rows")
    _check_modalities_present(splits, cfg)
    asr = next((r["asr"] for r in records if r is not None and r.get("asr")), None)
    extra_meta = {"extractors": describe,
                  "extract": {"config": cfg.record(), "fingerprint": run_fingerprint(cfg), "level": level,
                              "manifest": str(man.path), "manifest_sha256": man.sha256,
                              "split": man.split_record, "items": len(man.items), "extracted": len(ok),
                              "failed": len(man.items) - len(ok), "label_counts": man.label_counts,
                              "asr_items": sum(bool(r and r.get("used_asr")) for r in records),
                              "asr_extractor": asr}}
    return _write_with_extras(out, splits, man.label_names, level == "dialogue" or cfg.align == "words",
                              extra_meta, failures_csv, steps, overwrite, man)


_EMPTY_HINT = {"text": "no transcripts, and speech recognition found no words: give transcripts, or --text none",
               "visual": "no face in any frame (or no video): check the videos, or --visual none",
               "audio": "no audio: check the files, or --audio none"}


def _check_modalities_present(splits: dict[str, SplitArrays], cfg: ExtractConfig) -> None:
    """A modality missing from every sample of a split carries nothing: say why, before writing."""
    for s, sa in splits.items():
        for m, lens in sa.lengths.items():
            if not np.asarray(lens).any():
                raise DataError(f"no sample of split {s!r} has {m} features ({_EMPTY_HINT.get(m, '')}); "
                                f"extractor {getattr(cfg, m)!r}")


def _utterance_splits(man: Manifest, feats, dims, max_len) -> dict[str, SplitArrays]:
    out = {}
    for s in SPLITS:
        idx = [i for i, f in enumerate(feats) if f is not None and man.splits[i] == s]
        if not idx:
            continue
        x, lens = {}, {}
        for m, d in dims.items():
            x[m], lens[m] = pad_ragged([feats[i][m] for i in idx], d, max_len)
        out[s] = SplitArrays(features=x, labels=man.labels[idx], lengths=lens,
                             ids=[man.items[i].id for i in idx])
    return out


def _dialogue_splits(man: Manifest, feats, dims, max_len):
    out, steps = {}, {}
    for s in SPLITS:
        idx = [i for i, f in enumerate(feats) if f is not None and man.splits[i] == s]
        if not idx:
            continue
        pooled = [pooled_utterance(feats[i], dims) for i in idx]
        x = {m: np.stack([p[0][m] for p in pooled]) for m in dims}
        present = {m: np.array([p[1][m] for p in pooled]) for m in dims}
        dlg = np.array([man.items[i].dialogue for i in idx], dtype=object)
        sa = build_dialogues(dlg.astype(str), np.zeros(len(idx), np.int64), x, ["_"], present=present,
                             max_len=max_len, missing="zero", source=str(man.path))
        # the union of the utterances' label sets (build_dialogues takes one label per utterance)
        order = {d: k for k, d in enumerate(sa.ids)}
        rows = np.array([order[str(d)] for d in dlg])
        y = np.zeros((len(sa.ids), len(man.label_names)), np.uint8)
        np.maximum.at(y, rows, man.labels[idx])
        sa.labels = y
        out[s] = sa
        for i in idx:
            steps.setdefault(man.items[i].dialogue, []).append({"id": man.items[i].id,
                                                                "speaker": man.items[i].speaker})
    return out, steps


def _write_with_extras(out: Path, splits, labels, aligned: bool, extra_meta: dict, failures_csv,
                       steps, overwrite: bool, man: Manifest) -> FeatureStore:
    """write_store into a build directory, add the extraction record and side files, rename."""
    build = out.with_name(f".{out.name}.build")
    if build.exists():
        shutil.rmtree(build)  # left by a killed run; only ever ours (hidden, fixed name)
    try:
        store = write_store(build, splits, labels, name=out.name, source=f"media:{man.path.name}",
                            aligned=aligned, empty_labels="allow" if (man.labels.sum(1) == 0).any() else "reject")
        meta = {**store.meta, **extra_meta}
        (build / "meta.json").write_text(json.dumps(meta, indent=2))
        if failures_csv is not None and failures_csv.exists():
            shutil.copyfile(failures_csv, build / "failures.csv")
        if steps is not None:
            (build / "dialogues.json").write_text(json.dumps(steps))
        _check_out(out, overwrite)
        if out.exists():
            shutil.rmtree(out)
        os.replace(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return FeatureStore(out)


def summary(res: ExtractResult) -> dict[str, Any]:
    """A JSON-able account of a run (what the CLI prints)."""
    return {"store": None if res.store is None else str(res.store.path), "parts": str(res.parts),
            "selected": res.selected, "extracted": res.extracted, "skipped": res.skipped,
            "failed": res.failed, "failures_csv": str(res.failures_csv),
            "labels": res.manifest.label_counts, "split": res.manifest.split_record,
            "common_failures": Counter(r["reason"].split(";")[0] for r in
                                       _failure_records(res.manifest, [res.parts / "items"])).most_common(3)}
