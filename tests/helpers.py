"""Small builders shared by the tests (not fixtures, so any test can call them with its own sizes)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmerkit.data.batch import Batch
from mmerkit.data.store import DataSpec, SplitArrays, write_store

LABELS = ["happy", "sad", "anger"]


def random_split(n: int, seed: int = 0, t: int = 6, dims=(("text", 8), ("audio", 4)),
                 missing: float = 0.0) -> SplitArrays:
    """A learnable toy split: label j raises text features [j] at step 2."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(LABELS))) < 0.4).astype(np.uint8)
    y[y.sum(1) == 0, 0] = 1
    feats, lens = {}, {}
    for m, d in dims:
        feats[m] = rng.normal(size=(n, t, d)).astype(np.float32)
        lens[m] = rng.integers(3, t + 1, n)
        if missing:
            lens[m][rng.random(n) < missing] = 0
    feats[dims[0][0]][:, 1, : len(LABELS)] += 2.0 * y
    lens[dims[0][0]][:] = t
    return SplitArrays(feats, y, lengths=lens, ids=[f"s{seed}-{i}" for i in range(n)])


def toy_store(path, n_train=64, n_valid=24, n_test=32, **kw):
    splits = {"train": random_split(n_train, 1, **kw), "valid": random_split(n_valid, 2, **kw),
              "test": random_split(n_test, 3, **kw)}
    return write_store(path, splits, LABELS, name="toy", source="toy", overwrite=True)


# Tiny configurations, as `--set` overrides: one place for the sizes the tests train at.
TINY = ["model.hidden_size=16", "model.layers=1", "model.intermediate_size=32", "model.num_heads=2"]
CARAT_TINY = ["model.hidden_size=16", "model.num_heads=2", "model.intermediate_size=16", "model.proj_size=8",
              "model.layers={text: 1, audio: 1}", "model.moco_queue=64", "model.dropout=0.0"]
QUIET = ["train.batch_size=16", "train.progress=false"]  # small batches, no progress bar

# A tiny Batch for model-level tests (no store needed)
SPEC = DataSpec(("happy", "sad", "anger", "fear"), {"text": 12, "visual": 5, "audio": 7}, True,
                {"text": 8, "visual": 8, "audio": 8})


def make_batch(b: int = 32, t: int = 8, seed: int = 0, missing: str | None = None, spec: DataSpec = SPEC) -> Batch:
    """Random inputs with learnable evidence (label j raises text feature j at step 2), variable
    audio lengths (half the samples end at t/2), every sample with at least one label; with
    `missing`, that modality removed (Batch.without)."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(b, spec.num_labels, generator=g) < 0.4).float()
    y[y.sum(1) == 0, 0] = 1
    inputs = {m: torch.randn(b, t, d, generator=g) for m, d in spec.modalities.items()}
    first = spec.modality_names[0]
    k = min(spec.num_labels, spec.modalities[first])
    inputs[first][:, 2, :k] += 2 * y[:, :k]
    masks = {m: torch.ones(b, t, dtype=torch.bool) for m in spec.modalities}
    if "audio" in masks:
        masks["audio"][: b // 2, t // 2:] = False
    present = torch.ones(b, len(spec.modalities), dtype=torch.bool)
    batch = Batch(inputs, masks, present, y, torch.arange(b), spec.modality_names)
    return batch.without(missing) if missing else batch


# an easy, small version of the embedded data (500 samples of 12 steps, no noise) for tiny runs
# that must learn more than a constant prediction (tests/test_tailor.py, tests/test_amp.py)
EASY_SYNTH = {"samples": 500, "seq_len": 12, "difficulty": 0.0, "short_rate": 0.0,
              "dims": {"text": 16, "visual": 8, "audio": 8}}
EASY_DATA = [f"data.synthetic.{k}={v}" for k, v in EASY_SYNTH.items() if k != "dims"] + [
    "data.synthetic.dims={text: 16, visual: 8, audio: 8}"]


def best_constant_micro_f1(labels: np.ndarray) -> float:
    """The best micro-F1 that predicting one fixed label set for every sample reaches on `labels`
    (N, L): the score of the trivial solutions ("always the most frequent label", "always
    every label", ...). A model that learned something beats it."""
    y = np.asarray(labels) > 0.5
    L = y.shape[1]
    sets = (np.arange(1, 2 ** L)[:, None] >> np.arange(L)) & 1  # every non-empty label set
    tp = sets @ y.sum(0)  # predicted positives that are true, per set
    predicted = sets.sum(1) * y.shape[0]
    return float((2 * tp / (predicted + y.sum())).max())


# Keyword arguments of api.train for a quiet one-process CPU run
API_QUIET = dict(progress=False, accelerator="cpu", devices=1)


def snapshot(root: Path) -> dict[str, int]:
    """Every path under `root` with its modification time: equal snapshots = nothing was written."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def mmer_fails(capsys, *args: str) -> str:
    """`mmer ARGS` exits with code 2 and one `error:` line on stderr, without a traceback."""
    from mmerkit.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    return err


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """`mmer ARGS` in this process: (exit code, stdout, stderr)."""
    from mmerkit.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def mmer_ok(*args: str) -> None:
    """`mmer ARGS` succeeds (typer's standalone mode exits with code 0)."""
    from mmerkit.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    assert e.value.code in (0, None)


def assert_mentions(message: str, *patterns: str) -> None:
    """Every regex in `patterns` occurs in `message` (an error line names the thing and the fix)."""
    for pat in patterns:
        assert re.search(pat, message), f"{pat!r} not in: {message}"


def assert_beats_every_constant(test_metrics: dict) -> None:
    """A run on EASY_SYNTH learned: test micro-F1 5 points above the best constant prediction,
    and F1 > 0 on at least 3 labels."""
    from mmerkit import api

    trivial = best_constant_micro_f1(api.embedded_store(EASY_SYNTH).split("test").labels)
    f1 = {k: round(v, 3) for k, v in test_metrics.items() if k.startswith("f1/")}
    assert test_metrics["micro_f1"] > trivial + 0.05, (trivial, f1)
    assert sum(v > 0 for v in f1.values()) >= 3, f1


def extracted_export(root: Path, align: str = "none") -> Path:
    """An export of a one-epoch late fusion on a store that `mmer extract` made from 8 generated
    clips with the fake extractors (tests/fake_extractors.py, recogniser included): a model that
    takes media, in milliseconds."""
    from mmerkit import api
    from mmerkit.extract.config import ExtractConfig
    from mmerkit.extract.demo import write_clip

    if str(Path(__file__).parent) not in sys.path:  # the fake extractors are a plugin module here
        sys.path.insert(0, str(Path(__file__).parent))
    rows = ["id,media,transcript,labels,split"]
    splits = ["train"] * 4 + ["valid"] * 2 + ["test"] * 2
    for k in range(8):
        write_clip(root / f"c{k}.mp4", 1.2, colour=(30 * k, 200, 40), freq=140 + 60 * k)
        rows.append(f"c{k},c{k}.mp4,clip {k} speaks,{'joy' if k % 2 else 'anger;sad'},{splits[k]}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    fake = ExtractConfig(text="fake_text", audio="fake_audio", visual="fake_visual", asr_model="fake_asr",
                         plugins=["fake_extractors"], align=align, asr="on" if align == "words" else "auto")
    api.extract(root / "m.csv", root / "store", config=fake)
    [run] = api.train("late_fusion", root / "store", out=root / "runs", epochs=1,
                      overrides=[*TINY, "train.progress=false", "train.batch_size=4"])
    return run.run_dir / "export"
