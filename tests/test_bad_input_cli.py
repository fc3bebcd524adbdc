"""Bad input, second pass (issue 12): mistakes that used to end in a traceback, a crash after an
epoch, or a silent wrong result. Each goes through the real `mmer` entry point (exit code 2, one
`error:` line naming the file / key / sample / option and the fix, no traceback) or the public
Python API (the project's error type), and checks that nothing was left on disk."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import API_QUIET as QUIET
from helpers import (
    LABELS,
    TINY,
    assert_mentions,
    mmer_fails,
    mmer_ok,
    random_split,
    snapshot,
    toy_store,
)

from mmerkit import api
from mmerkit.cli import main
from mmerkit.data.custom import from_npz
from mmerkit.data.options import converter_option_names
from mmerkit.data.store import FeatureStore, write_store
from mmerkit.errors import ConfigError, DataError
from mmerkit.predict import Predictor


def _npz(path: Path, n: int = 12, empty_row: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    y = np.eye(n, 2, dtype=np.uint8) + np.eye(n, 2, -2, dtype=np.uint8)
    y[y.sum(1) == 0, 0] = 1
    if empty_row is not None:
        y[empty_row] = 0
    np.savez(path, audio=rng.normal(size=(n, 4, 3)).astype(np.float32), labels=y,
             label_names=np.array(["a", "b"]), split=np.array(["train", "valid", "test"] * (n // 3)))
    return path


# ----------------------------------------------------------------------------- item 2: converter options


from mmerkit.data.catalogue import CONVERTERS as _REGISTRY  # noqa: E402

CONVERTERS = _REGISTRY.names()


@pytest.mark.parametrize("source", CONVERTERS)
def test_misspelt_converter_option_names_the_closest(tmp_path, capsys, source):
    """Every converter's options are checked before any input is read (the input need not exist)."""
    err = mmer_fails(capsys, "data", "convert", "--from", source, str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                     "--empty-labelz", "allow")
    assert_mentions(err, rf"--from {source} has no option --empty-labelz", "Did you mean --empty-labels",
                    "Options: .*--empty-labels")
    err = mmer_fails(capsys, "data", "convert", "--from", source, str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                     "--bogus", "1")
    assert_mentions(err, rf"--from {source} has no option --bogus\.", "Options: ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("source", CONVERTERS)
def test_one_spelling_for_empty_labels_across_converters(source):
    fn = _REGISTRY.get(source)
    assert "empty_labels" in converter_option_names(fn)
    assert not {"allow_empty", "allow_empty_labels"} & set(converter_option_names(fn))


def test_the_empty_labels_advice_works_as_written(tmp_path, capsys):
    npz = _npz(tmp_path / "d.npz", empty_row=4)
    err = mmer_fails(capsys, "data", "convert", "--from", "custom", str(npz), "--out", str(tmp_path / "s"))
    assert_mentions(err, r"sample \d+ has an empty label set", r"CLI: --empty-labels allow")
    assert not (tmp_path / "s").exists()
    err = mmer_fails(capsys, "data", "convert", "--from", "custom", str(npz), "--out", str(tmp_path / "s"),
                     "--allow-empty-labels")
    assert_mentions(err, "has no option --allow-empty-labels", "Use --empty-labels allow")
    mmer_ok("data", "convert", "--from", "custom", str(npz), "--out", str(tmp_path / "s"), "--empty-labels", "allow")
    s = FeatureStore(tmp_path / "s")
    assert min(int(s.split(k).labels.sum(1).min()) for k in s.splits) == 0


def test_converter_option_of_the_wrong_type(tmp_path, capsys):
    npz = _npz(tmp_path / "d.npz")
    err = mmer_fails(capsys, "data", "convert", "--from", "custom", str(npz), "--out", str(tmp_path / "s"),
                     "--max-len", "abc")
    assert_mentions(err, r"option --max-len got 'abc'", "valid integer")
    err = mmer_fails(capsys, "data", "convert", "--from", "m3ed", str(npz), "--out", str(tmp_path / "s"),
                     "--truncate", "middle")
    assert_mentions(err, r"option --truncate got 'middle'", "'head' or 'tail'")
    assert not (tmp_path / "s").exists()


def test_text_file_named_npz(tmp_path, capsys):
    (tmp_path / "notes.npz").write_text("hello, these are not arrays\n")
    err = mmer_fails(capsys, "data", "convert", "--from", "custom", str(tmp_path / "notes.npz"),
                     "--out", str(tmp_path / "s"))
    assert_mentions(err, r"notes.npz is not an .npz archive \(it is a file starting with b'hello", "np.savez")
    assert "pickle" not in err
    np.save(tmp_path / "one.npy", np.zeros(3))
    (tmp_path / "one.npy").rename(tmp_path / "one.npz")
    with pytest.raises(DataError, match=r"it is a single .npy array"):
        from_npz(tmp_path / "one.npz", tmp_path / "s")
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------- item 3: NaN/inf in a store


def _poison(store: Path, rel: str = "train/text.npy", row: int = 5) -> None:
    x = np.load(store / rel)
    x[row, 0, 0] = np.nan
    x[row + 1, 1, 1] = np.inf
    np.save(store / rel, x)


def test_nan_in_an_existing_store_is_caught_when_opened(tmp_path, capsys):
    store = toy_store(tmp_path / "store").path
    _poison(store)
    before = snapshot(tmp_path)
    err = mmer_fails(capsys, "train", "-m", "early_fusion", "-d", str(store), "--out", str(tmp_path / "runs"),
                     "--epochs", "1", "--accelerator", "cpu")
    assert_mentions(err, re.escape(str(store / "train" / "text.npy")), "holds 1 NaN and 1 inf values",
                    r"first in s1-5", "mmer data inspect", "--nan-policy zero")
    assert snapshot(tmp_path) == before  # no run directory, nothing written into the store
    with pytest.raises(DataError, match="NaN"):  # every reader, not only training
        FeatureStore(store)


def test_nan_scan_is_cached_and_invalidated_by_a_rewrite(tmp_path, monkeypatch):
    from mmerkit.data import store as store_mod

    monkeypatch.setenv("MMERKIT_CACHE", str(tmp_path / "cache"))
    path = toy_store(tmp_path / "store").path
    FeatureStore(path)
    calls = []
    real = store_mod.nonfinite_count
    monkeypatch.setattr(store_mod, "nonfinite_count", lambda x: calls.append(1) or real(x))
    FeatureStore(path)
    assert calls == []  # the second open reads the cached result, not the features
    _poison(path, "valid/audio.npy", row=2)
    with pytest.raises(DataError, match=r"valid/audio.npy holds 1 NaN and 1 inf"):
        FeatureStore(path)
    assert calls  # the rewritten array was scanned again


def test_inspect_table_shows_nan_counts(tmp_path, capsys):
    store = toy_store(tmp_path / "store").path
    _poison(store)
    mmer_ok("data", "inspect", str(store))
    out = capsys.readouterr().out
    assert "NaN/inf" in out
    assert re.search(r"train/text: 2 NaN/inf values", out), out


# ----------------------------------------------------------------------------- item 7: tracebacks


def test_unknown_model(tmp_path, capsys):
    store = toy_store(tmp_path / "store").path
    before = snapshot(tmp_path)
    err = mmer_fails(capsys, "train", "-m", "carrat", "-d", str(store), "--out", str(tmp_path / "runs"),
                     "--epochs", "1")
    assert_mentions(err, "unknown model 'carrat'", "Did you mean 'carat'")
    with pytest.raises(ConfigError, match="unknown model 'carrat'"):
        api.train("carrat", store, out=tmp_path / "runs", epochs=1, **QUIET)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("setting, patterns", [
    ("optim.lr=-1", [r"config\.optim\.lr: Input should be greater than 0 \(got -1"]),
    ("optim.warmup_proportion=2", [r"config\.optim\.warmup_proportion: .*less than or equal to 1"]),
    ("train.threshold=1.5", [r"config\.train\.threshold: a threshold is a probability in \[0, 1\]"]),
])
def test_out_of_range_hyper_parameters(tmp_path, capsys, setting, patterns):
    store = toy_store(tmp_path / "store").path
    before = snapshot(tmp_path)
    err = mmer_fails(capsys, "train", "-m", "early_fusion", "-d", str(store), "--out", str(tmp_path / "runs"),
                     "--epochs", "1", "--set", setting)
    assert_mentions(err, *patterns)
    assert snapshot(tmp_path) == before


def test_out_is_a_file(tmp_path, capsys):
    store = toy_store(tmp_path / "store").path
    (tmp_path / "runs").write_text("not a directory")
    before = snapshot(tmp_path)
    err = mmer_fails(capsys, "train", "-m", "early_fusion", "-d", str(store), "--out", str(tmp_path / "runs"),
                     "--epochs", "1", "--accelerator", "cpu")
    assert_mentions(err, r"runs\S* \(CLI: --out\) is a file|--out \S*runs is a file", "choose another path")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("args, patterns", [
    (["--samples", "-5"], [r"synthetic data option samples: .*greater than or equal to 3 \(got -5\)",
                           "mmer data synth --samples"]),
    (["--missing-rate", "1.5"], [r"missing_rate: .*less than or equal to 1 \(got 1.5\)", "--missing-rate"]),
    (["--profile", "mosei"], [r"profile: unknown profile 'mosei'", "Did you mean 'mosei-like'", "mmer data synth --profile"]),
])
def test_synth_knobs_out_of_range(tmp_path, capsys, args, patterns):
    err = mmer_fails(capsys, "data", "synth", "--out", str(tmp_path / "s"), *args)
    assert_mentions(err, *patterns)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, patterns", [
    (["tsne", "--label", "happyy"], [r"--label 'happyy' is not a label", "Did you mean 'happy'", "Labels: happy"]),
    (["tsne", "--max-samples", "0"], [r"--max-samples 0: give at least 1"]),
    (["heatmap", "--max-samples", "0"], [r"--max-samples 0: give at least 1"]),
])
def test_plot_options_out_of_range(trained, tmp_path, capsys, args, patterns):
    _, run = trained
    kind, *rest = args
    err = mmer_fails(capsys, "plot", kind, str(run), "--out", str(tmp_path / "f.png"), *rest)
    assert_mentions(err, *patterns)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- item 8: silently accepted


@pytest.mark.parametrize("make, patterns", [
    (lambda sp: sp.features.__setitem__("audio", np.zeros((6, 0, 4), np.float32)), ["no time steps \\(T = 0\\)"]),
    (lambda sp: sp.features.__setitem__("audio", np.zeros((6, 5, 0), np.float32)), ["no feature dims \\(D = 0\\)"]),
    (lambda sp: sp.lengths.__setitem__("audio", np.zeros(6, int)), ["every sample has audio_len 0",
                                                                    "drop it or supply its lengths"]),
], ids=["T=0", "D=0", "all lengths 0"])
def test_empty_modality_is_refused_when_written(tmp_path, make, patterns):
    bad = random_split(6, 2)
    make(bad)
    with pytest.raises(DataError) as e:
        write_store(tmp_path / "s", {"train": random_split(6, 1), "valid": bad}, LABELS)
    assert_mentions(str(e.value), r"split 'valid', modality 'audio'|split 'valid'", *patterns)
    assert list(tmp_path.iterdir()) == []


def test_empty_modality_is_refused_when_opened(tmp_path, capsys):
    store = toy_store(tmp_path / "store").path
    np.save(store / "test" / "audio_len.npy", np.zeros(32, np.int32))
    before = snapshot(tmp_path)
    err = mmer_fails(capsys, "train", "-m", "early_fusion", "-d", str(store), "--out", str(tmp_path / "runs"),
                     "--epochs", "1")
    assert_mentions(err, r"test/audio_len.npy: every sample has length 0", "convert the store again")
    assert snapshot(tmp_path) == before
    np.save(store / "test" / "audio.npy", np.zeros((32, 0, 4), np.float32))
    err = mmer_fails(capsys, "data", "inspect", str(store))
    assert_mentions(err, r"test/audio.npy has shape \(32, 0, 4\): a modality needs T >= 1")


def test_eval_threshold_outside_zero_one(trained, capsys):
    _, run = trained
    for thr in ("1.5", "-0.2"):
        err = mmer_fails(capsys, "eval", str(run), "--threshold", thr)
        assert_mentions(err, rf"--threshold {thr}: a threshold is a probability, so it must be in \[0, 1\]")


def test_manifest_label_typo_warns_with_counts(tmp_path):
    rows = ["id,split,labels,audio"]
    for i in range(9):
        np.save(tmp_path / f"a{i}.npy", np.full((2, 3), i, np.float32))
        rows.append(f"u{i},{('train', 'valid', 'test')[i % 3]},{'happyy' if i == 4 else 'happy;sad'},a{i}.npy")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    with pytest.warns(UserWarning) as rec:
        api.data_convert("custom", tmp_path / "m.csv", tmp_path / "s")
    msg = str(rec[0].message)
    assert_mentions(msg, r"samples per label: happy 8, happyy 1, sad 8", "'happyy' \\(1 sample\\) looks like a typo "
                    "of 'happy'", "--label-names")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with label_names given there is nothing to warn about
        with pytest.raises(DataError, match="'happyy', which is not in label_names"):
            api.data_convert("custom", tmp_path / "m.csv", tmp_path / "s2", label_names=["happy", "sad"])


def test_predict_out_with_another_suffix(trained, tmp_path, capsys):
    store, run = trained
    for name in ("p.txt", "p"):
        err = mmer_fails(capsys, "predict", str(run / "export"), "--inputs", str(store.path),
                         "--out", str(tmp_path / name))
        assert_mentions(err, rf"--out \S*{name}: predictions are written as .csv or .jsonl", r"name the file p\.csv")
    assert list(tmp_path.iterdir()) == []


def test_predict_jsonl_labels_are_lists(trained, tmp_path):
    store, run = trained
    api.predict(run / "export", store.path, out=tmp_path / "p.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert all(isinstance(r["labels"], list) and set(r["labels"]) <= set(LABELS) for r in rows)
    assert any(r["labels"] for r in rows)


def test_plot_misspelt_keyword(trained, tmp_path):
    _, run = trained
    with pytest.raises(ConfigError, match=r"plot 'heatmap' has no option 'smaple'. Did you mean 'sample'"):
        api.plot("heatmap", run, out=tmp_path / "h.png", smaple="s3-0")
    with pytest.raises(ConfigError, match=r"plot 'curves' has no option 'max_samples'"):
        api.plot("curves", run, max_samples=3)
    assert list(tmp_path.iterdir()) == []


def test_predictor_arrays_without_steps(trained):
    _, run = trained
    p = Predictor.from_pretrained(run / "export")
    with pytest.raises(DataError, match=r"input 'text' has shape \(3, 0, 8\): no time steps"):
        p.predict({"text": np.zeros((3, 0, 8), np.float32), "audio": np.zeros((3, 0, 4), np.float32)})
    arrays = {"text": np.ones((3, 4, 8), np.float32), "audio": np.ones((3, 4, 4), np.float32),
              "text_len": np.array([4, 0, 4]), "audio_len": np.array([4, 0, 2])}
    with pytest.raises(DataError, match=r"input sample 1 has length 0 in every modality"):
        p.predict(arrays)


# ----------------------------------------------------------------------------- item 4: memory before training


def test_training_that_will_not_fit_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    from mmerkit import memory

    monkeypatch.setattr(memory, "available_memory", lambda acc: (20 * 10**6, "available RAM"))
    store = toy_store(tmp_path / "store", t=40).path
    before = snapshot(tmp_path)
    err = mmer_fails(capsys, "train", "-m", "early_fusion", "-d", str(store), "--out", str(tmp_path / "runs"),
                     "--epochs", "1", "--accelerator", "cpu", "--set", "train.batch_size=64")
    assert_mentions(err, r"training early_fusion on \S*store needs about [\d.]+ [MG]B per device \(batch 64; longest "
                    r"text 40, audio \d+ steps\), more than the 20 MB of available RAM",
                    r"--set train.batch_size=\d+", "--max-len", "train.memory_check=warn")
    assert snapshot(tmp_path) == before
    with pytest.warns(UserWarning, match="more than the 20 MB"):  # memory_check=warn: says so, then trains
        api.train("early_fusion", store, out=tmp_path / "runs", epochs=1, overrides=[*TINY, "train.batch_size=64"],
                  memory_check="warn", **QUIET)


def test_memory_estimate_follows_the_attention_cost(tmp_path):
    """Doubling T more than doubles CARAT's activations per sample (attention is T²); doubling the
    batch doubles the activation part."""
    from mmerkit.config import load_config
    from mmerkit.memory import estimate_training_memory
    from mmerkit.models.base import create_model

    per_sample = {}
    for t in (32, 64):
        store = toy_store(tmp_path / f"s{t}", t=t)
        cfg = load_config("carat", None, "carat-small", ["train.batch_size=8"])
        est = estimate_training_memory(create_model("carat", store.spec(), cfg.model), store, cfg)
        per_sample[t] = est.per_sample
        assert est.total == est.params + 8 * est.per_sample and est.longest["text"] == t
    assert per_sample[64] > 2.2 * per_sample[32]


def test_growing_position_table_is_reported(tmp_path):
    from mmerkit.config import load_config
    from mmerkit.memory import position_table_notes

    store = toy_store(tmp_path / "s", n_train=6, n_valid=3, n_test=3, t=600)
    notes = position_table_notes(load_config("early_fusion"), store)
    assert len(notes) == 2 and "text position table grows from model.max_len=512 to 600 steps" in notes[0]
    notes = position_table_notes(load_config("carat"), store)
    assert any("text position table grows from model.max_positions.text=60 to 600" in n for n in notes)
    assert any("audio position table grows from model.default_max_positions=500 to 600" in n for n in notes)
    assert position_table_notes(load_config("early_fusion"), toy_store(tmp_path / "short")) == []


# ----------------------------------------------------------------------------- --dry-run


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    store = toy_store(tmp_path / "store").path
    before = snapshot(tmp_path)
    mmer_ok("train", "-m", "early_fusion", "-d", str(store), "--out", str(tmp_path / "runs"), "--epochs", "3",
            "--seeds", "1", "2", "--accelerator", "cpu", "--set", "train.batch_size=16", "--dry-run")
    out = capsys.readouterr().out
    assert_mentions(out, r"model\s+early_fusion \([\d,]+ parameters\)", r"train 64, valid 24, test 32",
                    r"3 epochs × 4 steps \(batch 16\), 12 steps", r"devices\s+1 × cpu", r"memory\s+about \d+ MB",
                    r"writes\s+\S*runs/early_fusion_\S+_seed1", r"writes\s+\S*runs/early_fusion_\S+_seed2",
                    "nothing trained or written")
    assert snapshot(tmp_path) == before


def test_dry_run_still_validates(tmp_path, capsys):
    store = toy_store(tmp_path / "store").path
    _poison(store)
    err = mmer_fails(capsys, "train", "-m", "early_fusion", "-d", str(store), "--dry-run")
    assert_mentions(err, "holds 1 NaN and 1 inf values")
    err = mmer_fails(capsys, "train", "-m", "early_fusion", "-d", str(store), "--dry-run", "--set", "optim.lr=0")
    assert_mentions(err, "config.optim.lr: Input should be greater than 0")


# ----------------------------------------------------------------------------- item 10: small mismatches


def test_stores_and_runs_follow_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        store = toy_store(tmp_path / "store").path
        [res] = api.train("early_fusion", store, out=tmp_path / "runs", epochs=1, overrides=TINY, **QUIET)
    finally:
        os.umask(old)
    assert stat.S_IMODE(store.stat().st_mode) == 0o755
    assert stat.S_IMODE((store / "meta.json").stat().st_mode) == 0o644
    run = Path(res.run_dir)
    for f in ("last.ckpt", "config.yaml", "export/model.safetensors", "export/config.json", "test_metrics.json"):
        assert stat.S_IMODE((run / f).stat().st_mode) == 0o644, f


def test_latex_report_says_it_needs_booktabs(trained):
    from mmerkit.report import format_table, report

    tex = format_table(report([trained[1]]), "latex", 3, None)
    assert r"\usepackage{booktabs}" in tex and r"\toprule" in tex


def test_per_sample_heatmap_names_true_and_predicted_labels(trained):
    store, run = trained
    sid = store.split("test").ids[0]
    true = [lab for lab, v in zip(LABELS, store.split("test").labels[0]) if v]
    fig = api.plot("heatmap", run, sample=sid)
    title = fig._suptitle.get_text()
    assert f"sample {sid}; true: {', '.join(true)}; predicted: " in title


def test_datasets_table_descriptions_are_whole():
    rows = {r["name"]: r["description"] for r in api.datasets_table()}
    assert "matched by index" in rows["mosei-unaligned"] and "--labels-from" in rows["mosei-unaligned"]


# ----------------------------------------------------------------------------- item 5: Ctrl-C


def _ctrl_c_at(monkeypatch, model: str, call: int) -> None:
    """Make the `call`-th loss computation of `model` raise KeyboardInterrupt, as Ctrl-C would."""
    from mmerkit.models.base import model_class

    cls = model_class(model)
    real, calls = cls.loss, []

    def loss(self, out, batch):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(self, out, batch)

    monkeypatch.setattr(cls, "loss", loss)


@pytest.mark.parametrize("call", [4, 8], ids=["epoch 1", "epoch 2"])
def test_ctrl_c_saves_and_resume_finishes_the_same_run(tmp_path, capsys, monkeypatch, call):
    store = toy_store(tmp_path / "store").path
    args = ["train", "-m", "early_fusion", "-d", str(store), "--out", str(tmp_path / "runs"), "--epochs", "2",
            "--accelerator", "cpu", "--set", "train.batch_size=16", *[f"--set={o}" for o in TINY]]
    with monkeypatch.context() as m:
        _ctrl_c_at(m, "early_fusion", call)
        with pytest.raises(SystemExit) as e:
            main(args)
    assert e.value.code == 130
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "\n" not in err, err
    run = next((tmp_path / "runs").iterdir())
    # call 1 is the memory probe before training; then 4 batches an epoch; the interrupted one is not done
    batch, epoch = (call - 2) % 4, (call - 2) // 4 + 1
    assert_mentions(err, rf"interrupted: training of \S*{run.name} interrupted at epoch {epoch}, batch {batch}",
                    rf"saved \S*{run.name}/last.ckpt", r"continue with: mmer train .* --resume$")
    mmer_ok(*args, "--resume")
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [run.name]  # continued, not a new `_2` run
    resumed = json.loads((run / "test_metrics.json").read_text())
    [ref] = api.train("early_fusion", store, out=tmp_path / "ref", epochs=2, overrides=[*TINY, "train.batch_size=16"],
                      **QUIET)
    assert resumed["micro_f1"] == ref.test_metrics["micro_f1"] and resumed["best_epoch"] == ref.test_metrics["best_epoch"]


def test_resume_of_a_finished_run_says_so(trained, tmp_path, capsys):
    store, run = trained
    capsys.readouterr()
    mmer_ok("train", "-m", "early_fusion", "-d", str(store.path), "--out", str(run.parent), "--epochs", "1",
            "--accelerator", "cpu", "--resume", *[f"--set={o}" for o in TINY])
    out = capsys.readouterr().out
    assert_mentions(out, rf"{re.escape(str(run))} is finished \(test_metrics.json is there\): nothing to resume")


# ----------------------------------------------------------------------------- item 9: feedback


def test_epoch_and_batch_lines_name_the_run(tmp_path, capsys):
    store = toy_store(tmp_path / "store").path
    mmer_ok("train", "-m", "early_fusion", "-d", str(store), "--out", str(tmp_path / "runs"), "--epochs", "2",
            "--seeds", "3", "--accelerator", "cpu", "--set", "train.batch_size=16", *[f"--set={o}" for o in TINY])
    lines = capsys.readouterr().out.splitlines()
    batch = [i for i, s in enumerate(lines) if re.match(r"runs/early_fusion_\S+_seed3\s+epoch 1/2\s+batch 2/4\s+loss", s)]
    epoch = [i for i, s in enumerate(lines) if re.match(r"runs/early_fusion_\S+_seed3\s+epoch 1/2\s+loss", s)]
    assert batch and epoch and batch[0] < epoch[0], lines  # not a terminal: lines while the epoch runs


def test_eval_says_what_it_dropped_and_saved(trained, tmp_path, capsys):
    import shutil

    _, run_dir = trained
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    capsys.readouterr()
    mmer_ok("eval", str(run), "--drop-modality", "audio")
    out = capsys.readouterr().out
    assert_mentions(out, "the 'audio' modality was removed from every sample")
    mmer_ok("eval", str(run), "--threshold", "per-label", "--save-threshold")
    out = capsys.readouterr().out
    assert_mentions(out, r"saved threshold happy \d\.\d\d, sad \d\.\d\d, anger \d\.\d\d to \S*export/config.json")


def test_tsne_says_it_is_working(trained, tmp_path, capsys):
    _, run = trained
    mmer_ok("plot", "tsne", str(run), "--out", str(tmp_path / "t.png"), "--max-samples", "20")
    assert "t-SNE of the latents of up to 20 test samples" in capsys.readouterr().out


def test_rerun_of_ablate_says_it_reuses_runs(tmp_path, capsys):
    store = toy_store(tmp_path / "store").path
    kw = dict(out=tmp_path / "abl", seeds=[1], config="carat-small", epochs=1, only=["no-cl"], **QUIET,
              overrides=["model.hidden_size=16", "model.intermediate_size=32", "model.num_heads=2"])
    api.ablate("carat", store, **kw)
    capsys.readouterr()
    api.ablate("carat", store, **kw)
    out = capsys.readouterr().out
    assert_mentions(out, r"full: reusing finished run\(s\) with the same config: seed 1 \S+abl/full/carat_",
                    r"no-cl: reusing finished run\(s\)")


def train_early_fusion_with_loss(tmp_path, capsys, monkeypatch, change_total, epochs: int) -> str:
    """`mmer train -m early_fusion` on a toy store with `change_total(total, call)` applied to each
    step's loss (call counts from 1); returns the error line of the failed run."""
    from mmerkit.models.base import model_class

    cls = model_class("early_fusion")
    real, calls = cls.loss, []

    def loss(self, out, batch):
        terms = real(self, out, batch)
        calls.append(1)
        terms["total"] = change_total(terms["total"], len(calls))
        return terms

    monkeypatch.setattr(cls, "loss", loss)
    store = toy_store(tmp_path / "store").path
    return mmer_fails(capsys, "train", "-m", "early_fusion", "-d", str(store), "--out", str(tmp_path / "runs"),
                      "--epochs", str(epochs), "--accelerator", "cpu", "--set", "train.batch_size=16",
                      *[f"--set={o}" for o in TINY])


def test_a_diverging_loss_is_one_line_and_keeps_the_run_resumable(tmp_path, capsys, monkeypatch):
    """A NaN loss (too high a learning rate) in epoch 2: one line naming epoch, batch and the fix."""
    # the 7th call: the probe, 4 batches of epoch 1, then batch 1 of epoch 2
    err = train_early_fusion_with_loss(tmp_path, capsys, monkeypatch,
                                       lambda total, call: total * float("nan") if call == 7 else total, epochs=2)
    assert_mentions(err, r"non-finite loss terms \['total'\] at epoch 2, batch 1", "lower optim.lr")
    [run] = (tmp_path / "runs").iterdir()
    assert (run / "last.ckpt").exists() and not (run / "test_metrics.json").exists()


def test_an_overflowing_gradient_is_one_line_too(tmp_path, capsys, monkeypatch):
    """A finite loss whose gradient overflows (AMP's masked branch once did this on one-step
    features): the same one line, not torch's clip_grad_norm_ traceback."""
    import torch

    class Overflow(torch.autograd.Function):  # identity forward, infinite gradient
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * float("inf")

    err = train_early_fusion_with_loss(tmp_path, capsys, monkeypatch, lambda total, call: Overflow.apply(total),
                                       epochs=1)
    assert_mentions(err, r"non-finite gradient norm at epoch 1, batch 0", "lower optim.lr")


def test_unknown_modality_in_config_and_bad_max_len(tmp_path, capsys):
    store = toy_store(tmp_path / "store").path
    before = snapshot(tmp_path)
    err = mmer_fails(capsys, "train", "-m", "early_fusion", "-d", str(store), "--out", str(tmp_path / "runs"),
                     "--epochs", "1", "--set", "data.modalities=[txt]")
    assert_mentions(err, r"data.modalities lists 'txt', which \S*store does not have", "Did you mean 'text'")
    npz = _npz(tmp_path / "d.npz")
    err = mmer_fails(capsys, "data", "convert", "--from", "custom", str(npz), "--out", str(tmp_path / "s"),
                     "--max-len", "-3")
    assert_mentions(err, r"option --max-len got -3: give the number of steps to keep, >= 1")
    assert snapshot(tmp_path) == {**before, **{k: v for k, v in snapshot(tmp_path).items() if k == "d.npz"}}


def _out_commands(tmp_path: Path, trained, out: Path) -> dict[str, list[str]]:
    """train, predict, data synth and extract, each writing under `out`."""
    store, run = trained
    (tmp_path / "m.csv").write_text("id,transcript,labels,split\na,hello there,joy,train\n")
    return {
        "train": ["train", "-m", "early_fusion", "-d", str(store.path), "--out", str(out / "runs"), "--epochs", "1"],
        "predict": ["predict", str(run), "--inputs", str(store.path), "--out", str(out / "p" / "preds.csv")],
        "data synth": ["data", "synth", "--out", str(out / "synth")],
        "extract": ["extract", str(tmp_path / "m.csv"), "--out", str(out / "store"), "--audio", "none",
                    "--visual", "none"],
    }


@pytest.mark.parametrize("command", ["train", "predict", "data synth", "extract"])
def test_out_under_a_file_is_one_line_and_nothing_written(trained, tmp_path, capsys, command):
    """Issue 20 item 4: an --out that cannot be a folder is refused first (exit 2, one line naming
    it), not a 44-52-line traceback after the work."""
    (tmp_path / "blocked").write_text("a file where a folder should be")
    args = _out_commands(tmp_path, trained, tmp_path / "blocked")[command]
    before = snapshot(tmp_path)
    err = mmer_fails(capsys, *args)
    assert_mentions(err, r"--out \S*blocked\S*: \S*blocked is a file, not a folder")
    assert snapshot(tmp_path) == before


def _read_only_runner(folder: Path):
    """A way to run `mmer` against a read-only `folder`: chmod for a normal user; for root (which
    ignores permissions) a private read-only bind mount (unshare); None where neither works."""
    import os
    import shlex
    import subprocess
    import sys

    python = [sys.executable, "-m", "mmerkit"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda args: subprocess.run([*python, *args], capture_output=True, text=True, env=env)
    mount = f"mount --bind {shlex.quote(str(folder))} {shlex.quote(str(folder))} && " \
            f"mount -o remount,ro,bind {shlex.quote(str(folder))}"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"{mount} && ! touch {shlex.quote(str(folder / 'x'))}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return None
    return lambda args: subprocess.run(["unshare", "-m", "sh", "-c", f"{mount} && exec {shlex.join([*python, *args])}"],
                                       capture_output=True, text=True, env=env)


@pytest.mark.parametrize("command", ["train", "predict", "data synth", "extract"])
def test_read_only_out_folder_is_one_line_and_nothing_written(trained, tmp_path, command):
    ro = tmp_path / "ro"
    ro.mkdir()
    run = _read_only_runner(ro)
    if run is None:
        pytest.skip("cannot make a read-only folder here (root without unshare/mount)")
    try:
        res = run(_out_commands(tmp_path, trained, ro)[command])
    finally:
        ro.chmod(0o755)
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    assert_mentions(err, r"--out \S*ro\S*", "read-only|not writable")
    assert list(ro.iterdir()) == []
