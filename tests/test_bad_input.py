"""Bad input, end to end: every failure raises the project's error type (or makes `mmer` exit
non-zero with a one-line message) naming the file / key / sample and a fix, and leaves nothing
behind: no half-written store, no temporary directory, no run directory, no output file.

Message details of single functions are unit-tested in test_store.py, test_config.py,
test_custom.py and test_engine.py; here each case goes through the public entry point
(`write_store`, `api.train`, the `mmer` CLI) and also checks what is left on disk."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import API_QUIET as QUIET
from helpers import LABELS, TINY, assert_mentions, mmer_fails, random_split, snapshot, toy_store

from mmerkit import api
from mmerkit.data.custom import from_arrays
from mmerkit.data.store import FeatureStore, write_store
from mmerkit.errors import CheckpointError, ConfigError, DataError
from mmerkit.predict import Predictor

# ----------------------------------------------------------------------------- writing a store


WRITE_CASES = {
    # audio has N - 1 rows while text and labels have N
    "modality rows": (lambda sp: sp.features.__setitem__("audio", sp.features["audio"][:-1]),
                      [r"split 'valid', modality 'audio': 5 samples but labels has 6", "one row per sample"]),
    "lengths size": (lambda sp: sp.lengths.__setitem__("audio", sp.lengths["audio"][:-1]),
                     [r"split 'valid', audio_len: expected shape \(6,\), got \(5,\)", "one length per sample"]),
    "negative length": (lambda sp: sp.lengths["audio"].__setitem__(3, -2),
                        [r"audio_len of sample 3 \(id 's2-3'\) is -2, outside \[0, 6\]", "fix the lengths"]),
    "length > T": (lambda sp: sp.lengths["audio"].__setitem__(3, 7),
                   [r"audio_len of sample 3 \(id 's2-3'\) is 7, outside \[0, 6\]", "cannot exceed", "fix"]),
    "label outside 0/1": (lambda sp: sp.labels.__setitem__((4, 1), 2),
                          [r"sample 4 \(id 's2-4'\): labels must be 0/1, got \[\d, 2, \d\]", "multi-hot"]),
    "NaN": (lambda sp: sp.features["text"].__setitem__((2, 0, 0), np.nan),
            [r"modality 'text', sample 2 \(id 's2-2'\) contains NaN/inf", "nan_policy='zero'", "--nan-policy"]),
    "inf": (lambda sp: sp.features["audio"].__setitem__((5, 1, 1), -np.inf),
            [r"modality 'audio', sample 5 \(id 's2-5'\) contains NaN/inf", "nan_policy='zero'"]),
    "empty label set": (lambda sp: sp.labels.__setitem__(1, 0),
                        [r"sample 1 \(id 's2-1'\) has an empty label set", "empty_labels='allow'"]),
}


@pytest.mark.parametrize("case", list(WRITE_CASES))
def test_write_store_rejects_and_leaves_nothing(tmp_path, case):
    """The bad split comes second, so the first is already on disk when the error is found; the
    store's parent directories do not exist yet. Afterwards tmp_path must be empty again."""
    mutate, patterns = WRITE_CASES[case]
    bad = random_split(6, 2)
    mutate(bad)
    with pytest.raises(DataError) as e:
        write_store(tmp_path / "new" / "deeper" / "store", {"train": random_split(6, 1), "valid": bad}, LABELS)
    assert_mentions(str(e.value), *patterns)
    assert list(tmp_path.iterdir()) == []  # no store, no .store.tmp-*, no parent directories


def test_unknown_label_name_leaves_nothing(tmp_path):
    x = np.ones((4, 3), np.float32)
    labels = [["joy"], ["anger"], ["joy", "fear"], ["anger"]]
    with pytest.raises(DataError) as e:
        from_arrays({"audio": x}, labels, ["train", "valid", "test", "test"], tmp_path / "out" / "s",
                    label_names=["joy", "anger"], ids=["a", "b", "c", "d"])
    assert_mentions(str(e.value), r"sample 2 \(id 'c'\) has label 'fear', which is not in label_names",
                    "add it to label_names")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_never_replaces_a_foreign_directory(tmp_path):
    """--overwrite replaces a store; a directory that is not one (wrong or no meta.json) stays."""
    for name, meta in (("plain", None), ("foreign", {"format": "other-tool/3"})):
        d = tmp_path / name
        d.mkdir()
        (d / "notes.txt").write_text("keep me")
        if meta is not None:
            (d / "meta.json").write_text(json.dumps(meta))
        before = snapshot(tmp_path)
        with pytest.raises(DataError) as e:
            write_store(d, {"train": random_split(4, 1)}, LABELS, overwrite=True)
        assert_mentions(str(e.value), re.escape(str(d)), "is not a FeatureStore", "choose another --out")
        assert snapshot(tmp_path) == before
    toy_store(tmp_path / "store")  # a store itself is replaced (toy_store passes overwrite=True)
    toy_store(tmp_path / "store")


# ----------------------------------------------------------------------------- reading a store


def _save(rel: str, fn):
    def damage(path: Path):
        f = path / rel
        np.save(f, fn(np.load(f)))
    return damage


def _truncate(rel: str):
    def damage(path: Path):
        raw = (path / rel).read_bytes()
        (path / rel).write_bytes(raw[: len(raw) // 2])
    return damage


def _set_meta(**kw):
    def damage(path: Path):
        (path / "meta.json").write_text(json.dumps(kw))
    return damage


def _with(arr: np.ndarray, index, value) -> np.ndarray:
    arr = np.array(arr)
    arr[index] = value
    return arr


OPEN_CASES = {
    "modality rows": (_save("train/audio.npy", lambda x: x[:-1]),
                      [r"train/audio.npy has shape \(63, 6, 4\), but meta.json says \(64, T, 4\)", "convert it again"]),
    "lengths size": (_save("train/text_len.npy", lambda x: x[:-1]),
                     [r"train/text_len.npy has shape \(63,\), but meta.json implies \(64,\)", "convert it again"]),
    "negative length": (_save("valid/audio_len.npy", lambda x: _with(x, 5, -1)),
                        [r"valid/audio_len.npy: sample 5 has length -1, outside \[0, 6\]", "convert it again"]),
    "length > T": (_save("valid/audio_len.npy", lambda x: _with(x, 5, 7)),
                   [r"valid/audio_len.npy: sample 5 has length 7, outside \[0, 6\]", "convert it again"]),
    "label outside 0/1": (_save("test/labels.npy", lambda y: _with(y, (3, 0), 2)),
                          [r"test/labels.npy: sample 3 has labels \[2, ", "0/1 multi-hot", "convert the store again"]),
    "truncated .npy": (_truncate("valid/text.npy"),
                       [r"valid/text.npy is truncated or not a .npy file", "convert the store again"]),
    "missing modality file": (lambda p: (p / "test" / "audio.npy").unlink(),
                              [r"test/audio.npy is missing from the store", "convert the store again"]),
    "foreign features dtype": (_save("train/text.npy", lambda x: x.astype(str)),
                               [r"train/text.npy has dtype <U\d+, expected float32 \(64, T, 8\)",
                                "not written by mmerkit"]),
    "foreign lengths dtype": (_save("train/audio_len.npy", lambda x: x.astype(np.float32)),
                              [r"train/audio_len.npy has dtype float32, expected int32 \(64,\)", "convert"]),
    "foreign meta.json": (_set_meta(format="hdf5-features/2", files=[]),
                          [r"meta.json: format is 'hdf5-features/2', expected 'mmerkit-store/1'",
                           "not written by mmerkit", "mmer data convert"]),
    "meta.json without format": (_set_meta(name="corpus", version=3),
                                 [r"meta.json: format is None", "mmer data convert"]),
}


@pytest.mark.parametrize("case", list(OPEN_CASES))
def test_damaged_store_fails_train_before_anything_is_written(tmp_path, case):
    damage, patterns = OPEN_CASES[case]
    path = toy_store(tmp_path / "store").path
    damage(path)
    before = snapshot(tmp_path)
    with pytest.raises(DataError) as e:
        api.train("early_fusion", path, out=tmp_path / "runs", epochs=1, overrides=TINY, **QUIET)
    assert_mentions(str(e.value), *patterns)
    assert snapshot(tmp_path) == before  # no run directory, nothing written into the store
    with pytest.raises(DataError):  # the same check guards every reader, not only training
        FeatureStore(path)


# ----------------------------------------------------------------------------- configuration (CLI)


CONFIG_CASES = {
    "wrong type": ({"train": {"epochs": "many"}},
                   [r"config\.train\.epochs \(in \S*bad\.yaml\)", "valid integer", "got 'many'"]),
    "unknown key": ({"train": {"epoch": 3}},
                    [r"unknown key config\.train\.epoch \(in \S*bad\.yaml\)", "Did you mean 'epochs'", "Valid keys"]),
    "model not a mapping": ({"model": "early_fusion"},
                            [r"config\.model \(in \S*bad\.yaml\)", "valid dictionary"]),
    "unknown model key": ({"model": {"hiden_size": 8}},
                          [r"unknown key model\.hiden_size", "Did you mean 'hidden_size'"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_file(tmp_path, capsys, case):
    content, patterns = CONFIG_CASES[case]
    store = toy_store(tmp_path / "store").path
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(content))
    before = snapshot(tmp_path)
    err = mmer_fails(capsys, "train", "-m", "early_fusion", "-d", str(store), "--config", str(tmp_path / "bad.yaml"),
                     "--out", str(tmp_path / "runs"), "--accelerator", "cpu", "--epochs", "1")
    assert_mentions(err, *patterns)
    assert snapshot(tmp_path) == before


def test_more_cpu_devices_than_cores(tmp_path, capsys):
    """On CPU each device is a process; more than os.cpu_count() is refused before any launch."""
    store = toy_store(tmp_path / "store").path
    before = snapshot(tmp_path)
    cores = os.cpu_count()
    for n in (cores + 1, 99):
        err = mmer_fails(capsys, "train", "-m", "early_fusion", "-d", str(store), "--out", str(tmp_path / "runs"),
                         "--accelerator", "cpu", "--devices", str(n), "--epochs", "1")
        assert_mentions(err, rf"--devices {n} \(train.devices\)", rf"has {cores} CPU cores",
                        rf"pass --devices {cores} or fewer")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("accelerator", ["cuda", "gpu", "auto"])
def test_more_cuda_devices_than_present(tmp_path, capsys, monkeypatch, accelerator):
    """A machine with one CUDA device (simulated: the check runs before CUDA is touched)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    store = toy_store(tmp_path / "store").path
    before = snapshot(tmp_path)
    err = mmer_fails(capsys, "train", "-m", "early_fusion", "-d", str(store), "--out", str(tmp_path / "runs"),
                     "--accelerator", accelerator, "--devices", "2", "--epochs", "1")
    assert_mentions(err, r"--devices 2 \(train.devices\) with accelerator cuda",
                    r"has 1 CUDA devices \(torch.cuda.device_count\(\)\)", "pass --devices 1 or fewer")
    assert snapshot(tmp_path) == before


def test_cuda_without_a_gpu(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    store = toy_store(tmp_path / "store").path
    err = mmer_fails(capsys, "train", "-m", "early_fusion", "-d", str(store), "--out", str(tmp_path / "runs"),
                     "--accelerator", "cuda", "--devices", "1")
    assert_mentions(err, "has 0 CUDA devices", "pass --accelerator cpu")
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- checkpoints of another model


def _unfinished_copy(run_dir: Path, out: Path, name: str) -> Path:
    """A run directory `name` under `out` holding only `run_dir`'s last.ckpt (a crashed run)."""
    d = out / name
    d.mkdir(parents=True)
    shutil.copy(run_dir / "last.ckpt", d / "last.ckpt")
    return d


def test_resume_from_another_models_checkpoint(trained, tmp_path):
    store, run_dir = trained
    d = _unfinished_copy(run_dir, tmp_path / "runs", "late_fusion_toy_seed1")
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError) as e:
        api.train("late_fusion", store.path, out=tmp_path / "runs", epochs=1, overrides=TINY, resume=True, **QUIET)
    assert_mentions(str(e.value), re.escape(str(d / "last.ckpt")), "belongs to model 'early_fusion', not 'late_fusion'",
                    "use -m early_fusion")
    assert snapshot(tmp_path) == before  # no config.yaml / env.json written into the run directory


def test_resume_with_another_config(trained, tmp_path):
    store, run_dir = trained
    d = _unfinished_copy(run_dir, tmp_path / "runs", "early_fusion_toy_seed1")
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError) as e:
        api.train("early_fusion", store.path, out=tmp_path / "runs", epochs=1, resume=True,
                  overrides=[*TINY, "model.hidden_size=32"], **QUIET)
    assert_mentions(str(e.value), re.escape(str(d / "last.ckpt")), "does not fit this model",
                    r"file \(\d+, 16\) vs model \(\d+, 32\)", "config.yaml")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("edit, patterns", [
    (lambda c: c["model"].update(name="late_fusion"), ["belongs to model 'early_fusion', not 'late_fusion'"]),
    (lambda c: c["model"].update(hidden_size=32), ["model.safetensors does not fit this model", "16.*vs model.*32"]),
], ids=["other model", "other config"])
def test_eval_with_another_models_export(trained, tmp_path, capsys, edit, patterns):
    """`mmer eval RUN` where RUN/config.yaml and RUN/export disagree (an export copied between runs)."""
    store, run_dir = trained
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    edit(cfg)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    before = snapshot(tmp_path)
    err = mmer_fails(capsys, "eval", str(run), "-d", str(store.path))
    assert_mentions(err, re.escape(str(run / "export")), *patterns)
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- predict inputs


@pytest.mark.parametrize("dims, patterns", [
    ((("text", 8), ("visual", 4)), [r"missing modalities \['audio'\]", r"unknown modalities \['visual'\]"]),
    ((("text", 9), ("audio", 4)), [r"dims differ \(text: model 8, data 9\)"]),
], ids=["wrong modalities", "wrong dims"])
def test_predict_cli_rejects_wrong_inputs(trained, tmp_path, capsys, dims, patterns):
    _, run_dir = trained
    inputs = write_store(tmp_path / "inputs", {"test": random_split(5, 1, dims=dims)}, LABELS)
    before = snapshot(tmp_path)
    err = mmer_fails(capsys, "predict", str(run_dir / "export"), "--inputs", str(inputs.path),
                     "--out", str(tmp_path / "out" / "preds.csv"))
    assert_mentions(err, re.escape(str(inputs.path)), *patterns, r"the model expects \{'text': 8, 'audio': 4\}",
                    "same features as the training store")
    assert snapshot(tmp_path) == before  # no preds.csv, no out/ directory


def test_predict_arrays_with_an_unknown_modality(trained):
    _, run_dir = trained
    p = Predictor.from_pretrained(run_dir / "export")
    arrays = {"text": np.zeros((2, 6, 8), np.float32), "audio": np.zeros((2, 6, 4), np.float32),
              "visual": np.zeros((2, 6, 3), np.float32)}
    with pytest.raises(DataError, match=r"unknown modalities \['visual'\]; the model expects \['text', 'audio'\]"):
        p.predict(arrays)
    with pytest.raises(DataError, match=r"input 'audio' has 3 samples, other modalities have 2"):
        p.predict({"text": arrays["text"], "audio": np.zeros((3, 6, 4), np.float32)})


def test_config_error_type_through_the_api(tmp_path):
    """The same configuration errors reach Python callers as ConfigError (no SystemExit)."""
    with pytest.raises(ConfigError, match=r"pass --devices \d+ or fewer"):
        api.train("early_fusion", toy_store(tmp_path / "s").path, out=tmp_path / "runs", epochs=1,
                  overrides=TINY, progress=False, accelerator="cpu", devices=10_000)
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- run directories (issue 12: 1, 6)


def test_run_records_the_absolute_store_and_eval_works_from_another_folder(tmp_path, monkeypatch):
    """A run made from one folder is evaluated from any other: env.json holds the store's
    absolute path and fingerprint (it held the path as typed, relative to the training folder)."""
    from mmerkit.run import store_fingerprint

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    store = toy_store(Path("store"))
    [res] = api.train("early_fusion", "store", out="runs", epochs=1, overrides=TINY, **QUIET)
    env = json.loads((work / res.run_dir / "env.json").read_text())
    assert env["store"] == str((work / "store").resolve())
    assert env["store_fingerprint"] == store_fingerprint(store)
    monkeypatch.chdir(tmp_path)
    metrics = api.evaluate(work / res.run_dir)
    assert metrics["micro_f1"] == pytest.approx(res.test_metrics["micro_f1"])


def test_eval_after_the_store_moved_says_what_to_pass(trained, tmp_path, capsys):
    store, run_dir = trained
    moved = tmp_path / "moved"
    shutil.copytree(store.path, moved)
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    env = json.loads((run / "env.json").read_text())
    env["store"] = str(tmp_path / "gone" / "store")  # the store was trained on, since moved away
    (run / "env.json").write_text(json.dumps(env))
    err = mmer_fails(capsys, "eval", str(run))
    assert_mentions(err, re.escape(str(tmp_path / "gone" / "store")), "not there any more", r"-d STORE")
    assert "omit -d" not in err
    # passing the moved store works, and its fingerprint is the recorded one
    assert api.evaluate(run, data=moved)["micro_f1"] == pytest.approx(api.evaluate(run_dir)["micro_f1"])


def test_eval_refuses_a_store_that_changed_since_training(trained, tmp_path, capsys):
    store, run_dir = trained
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    env = json.loads((run / "env.json").read_text())
    env["store_fingerprint"] = "0" * 16  # as if the store had been converted again since
    (run / "env.json").write_text(json.dumps(env))
    err = mmer_fails(capsys, "eval", str(run))
    assert_mentions(err, "changed since", re.escape(str(store.path)), r"-d STORE")


def test_runs_are_named_by_the_store_not_its_converter(tmp_path, capsys):
    """Two custom stores no longer share the name `custom` (the second run was `_2`); a name
    that is taken is numbered visibly."""
    rng = np.random.default_rng(0)
    n = 24
    feats = {"text": rng.normal(size=(n, 4, 8)).astype(np.float32)}
    y = np.eye(3, dtype=np.uint8)[rng.integers(0, 3, n)]
    split = np.array(["train"] * 12 + ["valid"] * 6 + ["test"] * 6)
    dirs = []
    for name in ("one", "two"):
        store = from_arrays(feats, y, split, tmp_path / "stores" / name, label_names=LABELS)
        [res] = api.train("early_fusion", store.path, out=tmp_path / "runs", epochs=1, overrides=TINY, **QUIET)
        dirs.append(res.run_dir.name)
    assert dirs == ["early_fusion_one_seed1", "early_fusion_two_seed1"]
    capsys.readouterr()
    [again] = api.train("early_fusion", tmp_path / "stores" / "one", out=tmp_path / "runs", epochs=1,
                        overrides=TINY, **QUIET)
    assert again.run_dir.name == "early_fusion_one_seed1_2"
    out = capsys.readouterr().out
    assert "early_fusion_one_seed1 already exists" in out and "early_fusion_one_seed1_2" in out


def test_duplicate_seeds_are_refused(tmp_path, capsys):
    store = toy_store(tmp_path / "s")
    before = snapshot(tmp_path)
    err = mmer_fails(capsys, "train", "-m", "early_fusion", "-d", str(store.path), "--out", str(tmp_path / "runs"),
                     "--seeds", "1", "--seeds", "1", "--epochs", "1")
    assert_mentions(err, r"repeats seed 1", r"--seeds 1 2 3")
    with pytest.raises(ConfigError, match=r"seeds=\[2, 3, 2\].*repeats seed 2"):
        api.train("early_fusion", store.path, out=tmp_path / "runs", seeds=[2, 3, 2], epochs=1, **QUIET)
    assert snapshot(tmp_path) == before
