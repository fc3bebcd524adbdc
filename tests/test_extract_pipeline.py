"""`mmer extract` pipeline: manifest rules, the store it writes, failures, resume, shards.

The extractors are the fakes of tests/fake_extractors.py (a plugin module), so these tests
need PyAV (to write and decode small clips) but no model files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av", reason="PyAV writes and decodes the test clips: pip install 'mmerkit[media]'")

from mmerkit.errors import ConfigError, DataError  # noqa: E402
from mmerkit.extract.config import ExtractConfig  # noqa: E402
from mmerkit.extract.demo import write_clip  # noqa: E402
from mmerkit.extract.manifest import read_media_manifest, seeded_split  # noqa: E402
from mmerkit.extract.pipeline import item_name, parts_dir, run_extract  # noqa: E402

FAKE = ExtractConfig(text="fake_text", audio="fake_audio", visual="fake_visual", asr_model="fake_asr",
                     plugins=["fake_extractors"])
TESTS = Path(__file__).parent


def _manifest(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    import csv

    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (220, 220, 30), (0, 0, 0), (30, 200, 200)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Six 1.5 s mp4 clips (clip4 is black: 'no face'), one wav, one long file to cut from."""
    d = tmp_path_factory.mktemp("media")
    for k, c in enumerate(COLOURS):
        write_clip(d / f"clip{k}.mp4", 1.5, colour=c, freq=150 + 60 * k, loud=0.1 + 0.1 * (k % 3))
    write_clip(d / "voice.wav", 1.0, video=False)
    write_clip(d / "long.mp4", 4.0, colour=(120, 120, 120))
    return d


def _good_rows(n: int = 6) -> list[dict]:
    labels = ["joy", "anger", "joy;sad", "sad", "anger;joy", "joy"]
    splits = ["train", "train", "train", "valid", "test", "test"]
    return [{"id": f"u{k}", "media": f"clip{k}.mp4", "transcript": f"hello number {k}",
             "labels": labels[k], "split": splits[k]} for k in range(n)]


@pytest.fixture()
def fake_log(tmp_path, monkeypatch) -> Path:
    log = tmp_path / "calls.log"
    monkeypatch.setenv("MMERKIT_FAKE_LOG", str(log))
    monkeypatch.syspath_prepend(str(TESTS))
    return log


def _calls(log: Path, name: str) -> int:
    return sum(1 for line in log.read_text().splitlines() if line.startswith(name + "\t")) if log.exists() else 0


def test_extract_writes_an_ordinary_store(clips, tmp_path, fake_log):
    man = _manifest(clips / "m_basic.csv", _good_rows())
    res = run_extract(man, tmp_path / "store", config=FAKE)
    store = res.store
    assert store.modalities == {"text": 6, "audio": 3, "visual": 3}
    assert store.labels == ["anger", "joy", "sad"] and store.splits == {"train": 3, "valid": 1, "test": 2}
    assert store.aligned is False
    tr = store.split("train")
    assert tr.ids == ["u0", "u1", "u2"]
    assert tr.labels.tolist() == [[0, 1, 0], [1, 0, 0], [0, 1, 1]]
    # 1.5 s: text = 3 words, audio at 10 Hz = 15 steps, visual at 5 fps = 8 frames (k / 5 < 1.5)
    assert tr.lengths["text"].tolist() == [3, 3, 3]
    assert tr.lengths["audio"].tolist() == [15, 15, 15]
    assert tr.lengths["visual"].tolist() == [8, 8, 8]
    red, green = tr.features["visual"][0, 0], tr.features["visual"][1, 0]
    assert red[0] > 0.6 and red[1] < 0.3 and green[1] > 0.6  # the colours survive decode + extract
    # the black clip has no 'face' in any frame: its visual modality is missing (length 0)
    te = store.split("test")
    assert te.ids == ["u4", "u5"] and te.lengths["visual"].tolist() == [0, 8]
    assert not te.features["visual"][0].any()
    meta = store.meta
    assert meta["extractors"]["audio"]["name"] == "fake_audio" and meta["extractors"]["text"]["dim"] == 6
    assert meta["extract"]["config"]["fps"] == 5.0 and meta["extract"]["failed"] == 0
    assert meta["extract"]["split"]["source"] == "column"
    assert res.extracted == 6 and res.skipped == 0 and res.failed == 0
    assert _calls(fake_log, "fake_audio") == 6 and _calls(fake_log, "fake_asr") == 0


def _bad_rows() -> list[dict]:
    return [
        {"id": "missing", "media": "nowhere.mp4", "labels": "joy", "split": "train"},
        {"id": "unreadable", "media": "garbage.mp4", "labels": "joy", "split": "train"},
        {"id": "no_audio", "media": "silent.mp4", "labels": "joy", "split": "train"},
        {"id": "zero", "media": "empty.wav", "labels": "joy", "split": "train"},
        {"id": "reversed", "media": "long.mp4", "start": "3.0", "end": "1.0", "labels": "joy", "split": "train"},
        {"id": "beyond", "media": "long.mp4", "start": "9.0", "end": "10.0", "labels": "joy", "split": "train"},
    ]


@pytest.fixture(scope="module")
def bad_media(clips) -> Path:
    (clips / "garbage.mp4").write_text("this is not a video")
    write_clip(clips / "silent.mp4", 1.0, audio=False)
    with wave.open(str(clips / "empty.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(b"")
    return clips


def test_bad_items_go_to_failures_csv_and_the_rest_is_stored(bad_media, tmp_path, fake_log):
    rows = _good_rows() + _bad_rows()
    for r in rows:
        r.setdefault("transcript", "some words here")
    man = _manifest(bad_media / "m_bad.csv", rows, ["id", "media", "start", "end", "transcript", "labels", "split"])
    res = run_extract(man, tmp_path / "store", config=FAKE)
    assert res.failed == 6 and res.store is not None
    assert sum(res.store.splits.values()) == 6  # only complete items
    import csv

    fails = {r["id"]: r for r in csv.DictReader(open(res.failures_csv))}
    assert set(fails) == {"missing", "unreadable", "no_audio", "zero", "reversed", "beyond"}
    assert "does not exist" in fails["missing"]["reason"]
    assert "cannot be read" in fails["unreadable"]["reason"]
    assert "no audio track" in fails["no_audio"]["reason"]
    assert "zero length" in fails["zero"]["reason"]
    assert "not before end" in fails["reversed"]["reason"]
    assert "beyond the end" in fails["beyond"]["reason"]
    assert fails["reversed"]["line"] == "12"  # the manifest line, for the user
    assert (res.store.path / "failures.csv").read_text() == res.failures_csv.read_text()
    assert res.store.meta["extract"]["failed"] == 6


def test_strict_stops_at_the_first_bad_item(bad_media, tmp_path, fake_log):
    rows = _good_rows() + [_bad_rows()[0]]
    man = _manifest(bad_media / "m_strict.csv", rows, ["id", "media", "transcript", "labels", "split"])
    with pytest.raises(DataError, match=r"line 8 \(id 'missing'\).*does not exist.*--strict"):
        run_extract(man, tmp_path / "store", config=FAKE, strict=True)
    assert not (tmp_path / "store").exists()


def test_rerun_skips_finished_items_and_redoes_changed_rows(clips, tmp_path, fake_log):
    rows = _good_rows()
    man = _manifest(clips / "m_rerun.csv", rows)
    run_extract(man, tmp_path / "store", config=FAKE)
    assert _calls(fake_log, "fake_audio") == 6
    rows[2]["transcript"] = "a changed transcript"
    _manifest(man, rows)
    res = run_extract(man, tmp_path / "store", config=FAKE, overwrite=True)
    assert _calls(fake_log, "fake_audio") == 7  # only the changed row again
    assert res.skipped == 5 and res.extracted == 1
    assert res.store.split("train").lengths["text"].tolist() == [3, 3, 3]
    # another configuration never reuses features of the first one
    run_extract(man, tmp_path / "store", config=FAKE.model_copy(update={"fps": 2.0}), overwrite=True)
    assert _calls(fake_log, "fake_audio") == 13


def test_existing_output_needs_overwrite(clips, tmp_path, fake_log):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "notes.txt").write_text("mine")
    man = _manifest(clips / "m_exists.csv", _good_rows())
    with pytest.raises(DataError, match="already exists; pass --overwrite"):
        run_extract(man, tmp_path / "store", config=FAKE)
    with pytest.raises(DataError, match="not a FeatureStore"):
        run_extract(man, tmp_path / "store", config=FAKE, overwrite=True)
    assert (tmp_path / "store" / "notes.txt").read_text() == "mine"


def test_killed_extraction_resumes_and_skips_written_items(clips, tmp_path, fake_log, monkeypatch):
    rows = _good_rows()
    man = _manifest(clips / "m_kill.csv", rows)
    out = tmp_path / "store"
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); from mmerkit.extract.pipeline import run_extract; "
            "from mmerkit.extract.config import ExtractConfig; "
            f"run_extract({str(man)!r}, {str(out)!r}, config=ExtractConfig(**{FAKE.model_dump()!r}))")
    env = {**os.environ, "MMERKIT_FAKE_SLEEP": "0.4"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    items = parts_dir(out) / "items"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(items.glob("*.npz"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(items.glob("*.npz")))
    assert 2 <= done_before < 6, "the kill should land mid-run"
    assert not out.exists()  # no half-written store
    audio_calls = _calls(fake_log, "fake_audio")
    res = run_extract(man, out, config=FAKE)
    assert res.skipped == done_before and res.extracted == 6 - done_before
    assert _calls(fake_log, "fake_audio") - audio_calls == 6 - done_before
    assert sum(res.store.splits.values()) == 6


def test_shards_then_merge_equal_a_single_run(clips, tmp_path, fake_log):
    rows = _good_rows()
    man = _manifest(clips / "m_shard.csv", rows)
    whole = run_extract(man, tmp_path / "whole", config=FAKE).store
    a = run_extract(man, tmp_path / "node1" / "s", config=FAKE, shard="1/2")
    b = run_extract(man, tmp_path / "node2" / "s", config=FAKE, shard="2/2")
    assert a.store is None and b.store is None and a.selected + b.selected == 6
    assert a.selected > 0 and b.selected > 0
    with pytest.raises(DataError, match="have no features yet.*missing shards"):
        run_extract(man, tmp_path / "merged", config=FAKE, merge=True, parts=[a.parts])
    for clip in clips.glob("clip*.mp4"):  # the merging machine's copies have other timestamps
        os.utime(clip, (time.time() + 100, time.time() + 100))
    merged = run_extract(man, tmp_path / "merged", config=FAKE, merge=True, parts=[a.parts, b.parts]).store
    assert merged.splits == whole.splits
    for s in whole.splits:
        for m in whole.modalities:
            np.testing.assert_array_equal(merged.split(s).features[m], whole.split(s).features[m])
            np.testing.assert_array_equal(merged.split(s).lengths[m], whole.split(s).lengths[m])
        np.testing.assert_array_equal(merged.split(s).labels, whole.split(s).labels)


@pytest.mark.parametrize("bad", ["0/2", "3/2", "1-2"])
def test_bad_shard_spec(clips, tmp_path, bad):
    man = _manifest(clips / "m_badshard.csv", _good_rows())
    with pytest.raises(ConfigError, match="--shard"):
        run_extract(man, tmp_path / "s", config=FAKE, shard=bad)


def test_worker_processes_give_the_same_store(clips, tmp_path, fake_log):
    import torch

    man = _manifest(clips / "m_workers.csv", _good_rows())
    one = run_extract(man, tmp_path / "one", config=FAKE).store
    fake_log.unlink()
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        two = run_extract(man, tmp_path / "two", config=FAKE, workers=2).store
        assert torch.get_num_threads() == 3  # this process extracted with the helpers' count, then got its own back
    finally:
        torch.set_num_threads(before)
    for s in ("train", "valid", "test"):
        for m in one.modalities:
            np.testing.assert_array_equal(one.split(s).features[m], two.split(s).features[m])
    calls = [line.split("\t") for line in fake_log.read_text().splitlines() if line.startswith("fake_audio\t")]
    assert sorted(c[1] for c in calls) == [f"u{k}" for k in range(6)]  # every item once, none twice
    # --workers 2: this process extracts too (it has loaded torch already), next to one helper process
    # that is handed its first items at once, so both take part whatever their speeds
    pids = {int(c[2]) for c in calls}
    assert os.getpid() in pids and len(pids) == 2


def test_extract_and_the_cli_start_without_torch():
    """`mmer extract` starts its helper processes before it loads torch (seconds of start-up, more
    than a few dozen short clips take): the CLI, the pipeline and the store must not import it."""
    code = ("import sys, mmerkit.cli, mmerkit.extract.pipeline, mmerkit.extract.manifest, mmerkit.data.store; "
            "print(sorted(m for m in ('torch', 'transformers', 'librosa', 'mediapipe') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_dialogue_level_store(clips, tmp_path, fake_log):
    rows = _good_rows()
    dialogues = ["d1", "d1", "d2", "d3", "d4", "d4"]
    speakers = ["ann", "bob", "ann", "cy", "bob", "ann"]
    splits = ["train", "train", "train", "valid", "test", "test"]
    for r, d, s, sp in zip(rows, dialogues, speakers, splits):
        r.update(dialogue=d, speaker=s, split=sp)
    man = _manifest(clips / "m_dlg.csv", rows)
    store = run_extract(man, tmp_path / "store", config=FAKE).store
    tr = store.split("train")
    assert tr.ids == ["d1", "d2"] and store.aligned
    assert tr.lengths["audio"].tolist() == [2, 1]  # one step per utterance
    assert tr.labels.tolist() == [[1, 1, 0], [0, 1, 1]]  # union of joy / anger, and joy;sad
    te = store.split("test")
    assert te.lengths["visual"].tolist() == [2]  # the black clip is a zero step, not a missing dialogue
    assert not te.features["visual"][0, 0].any() and te.features["visual"][0, 1].any()
    steps = json.loads((store.path / "dialogues.json").read_text())
    assert steps["d1"] == [{"id": "u0", "speaker": "ann"}, {"id": "u1", "speaker": "bob"}]
    assert store.meta["extract"]["level"] == "dialogue"


def test_text_only_extraction_needs_no_media(tmp_path, fake_log):
    rows = [{"id": f"t{k}", "media": "", "transcript": "w " * (k + 1), "labels": "a" if k % 2 else "b",
             "split": ["train", "valid", "test"][k % 3]} for k in range(6)]
    man = _manifest(tmp_path / "m.csv", rows)
    cfg = ExtractConfig(text="fake_text", audio=None, visual=None, asr="off", plugins=["fake_extractors"])
    store = run_extract(man, tmp_path / "store", config=cfg).store
    assert store.modalities == {"text": 6}
    assert store.split("train").lengths["text"].tolist() == [1, 4]
    with pytest.raises(DataError, match="column 'media': empty cell; row 't0' needs a media path"):
        run_extract(man, tmp_path / "store2", config=FAKE)


def test_transcript_from_speech_recognition_when_missing(clips, tmp_path, fake_log):
    rows = _good_rows()
    rows[0]["transcript"] = ""
    man = _manifest(clips / "m_asr.csv", rows)
    store = run_extract(man, tmp_path / "store", config=FAKE).store
    assert _calls(fake_log, "fake_asr") == 1  # only the row without a transcript
    assert store.split("train").lengths["text"][0] == 3  # 1.5 s -> 3 recognised words
    assert store.meta["extract"]["asr_items"] == 1
    off = FAKE.model_copy(update={"asr": "off"})
    store = run_extract(man, tmp_path / "store_off", config=off).store
    assert store.split("train").lengths["text"][0] == 0  # no transcript, no ASR: text missing


# ----------------------------------------------------------------------------- manifest rules


def test_labels_from_names_counts_and_typo_warning(tmp_path):
    rows = [{"id": f"i{k}", "media": "x.mp4", "labels": "joy"} for k in range(20)]
    rows += [{"id": "t", "media": "x.mp4", "labels": "jyo"}, {"id": "s", "media": "x.mp4", "labels": "sad;joy"}]
    m = read_media_manifest(_manifest(tmp_path / "m.csv", rows))
    assert m.label_names == ["joy", "jyo", "sad"] and m.label_counts == {"joy": 21, "jyo": 1, "sad": 1}
    assert len(m.warnings) == 1 and "'jyo' appears only 1 time(s) and looks like 'joy'" in m.warnings[0]
    with pytest.raises(DataError, match=r"m.csv, line 22, column 'labels': label 'jyo' is not in --label-names"):
        read_media_manifest(tmp_path / "m.csv", label_names="joy,sad")
    m = read_media_manifest(tmp_path / "m.csv", label_names=["sad", "joy", "jyo"])
    assert m.label_names == ["sad", "joy", "jyo"] and m.labels[-1].tolist() == [1, 1, 0]


def test_labels_from_01_columns(tmp_path):
    rows = [{"id": f"i{k}", "media": "x.mp4", "joy": str(k % 2), "anger": str(1 - k % 2)} for k in range(6)]
    m = read_media_manifest(_manifest(tmp_path / "m.csv", rows))
    assert m.label_names == ["joy", "anger"] and m.labels[:2].tolist() == [[0, 1], [1, 0]]
    rows[3]["joy"] = "yes"
    with pytest.raises(DataError, match=r"line 5, column 'joy': 'yes' is not 0 or 1"):
        read_media_manifest(_manifest(tmp_path / "m.csv", rows))


def test_misspelt_column_and_other_manifest_errors(tmp_path):
    base = {"id": "a", "media": "x.mp4", "labels": "joy"}
    with pytest.raises(DataError, match=r"unknown column\(s\) \['transcrpt'\].*Did you mean 'transcript'"):
        read_media_manifest(_manifest(tmp_path / "m.csv", [{**base, "transcrpt": "hi"}]))
    with pytest.raises(DataError, match=r"line 3, column 'id': id 'a' already used on line 2"):
        read_media_manifest(_manifest(tmp_path / "m.csv", [base, base]))
    with pytest.raises(DataError, match=r"line 2, column 'start': 'soon' is not a number of seconds"):
        read_media_manifest(_manifest(tmp_path / "m.csv", [{**base, "start": "soon"}]))
    with pytest.raises(DataError, match=r"line 3, column 'labels': row 'b' has no label.*--empty-labels allow"):
        read_media_manifest(_manifest(tmp_path / "m.csv", [base, {**base, "id": "b", "labels": ""}]))
    with pytest.raises(DataError, match="no 'media' column"):
        read_media_manifest(_manifest(tmp_path / "m.csv", [{"id": "a", "labels": "joy"}]))
    with pytest.raises(DataError, match=r"line 2, column 'split': 'training' is not a split"):
        read_media_manifest(_manifest(tmp_path / "m.csv", [{**base, "split": "training"}]))


def test_seeded_split_is_recorded_deterministic_and_keeps_dialogues_whole(tmp_path):
    rows = [{"id": f"i{k}", "media": "x.mp4", "labels": "joy", "dialogue": f"d{k // 3}"} for k in range(60)]
    m = read_media_manifest(_manifest(tmp_path / "m.csv", rows), split_seed=3)
    assert m.split_record["source"] == "seeded" and m.split_record["seed"] == 3
    assert m.split_record["unit"] == "dialogue" and m.split_record["sizes"] == {"train": 42, "valid": 6, "test": 12}
    by_dialogue = {}
    for it, s in zip(m.items, m.splits):
        by_dialogue.setdefault(it.dialogue, set()).add(s)
    assert all(len(v) == 1 for v in by_dialogue.values())
    assert read_media_manifest(tmp_path / "m.csv", split_seed=3).splits == m.splits
    assert read_media_manifest(tmp_path / "m.csv", split_seed=4).splits != m.splits
    rows[1]["split"] = "test"
    for r in rows:
        r.setdefault("split", "train")
    with pytest.raises(DataError, match=r"line 3, column 'split': dialogue 'd0' is in split 'test' here but "
                                        r"in 'train' on line 2"):
        read_media_manifest(_manifest(tmp_path / "m.csv", rows))


def test_seeded_split_of_items_is_70_10_20():
    from mmerkit.extract.manifest import MediaItem

    items = [MediaItem(id=str(k), media=None, line=k) for k in range(100)]
    s = seeded_split(items, 0)
    assert (s.count("train"), s.count("valid"), s.count("test")) == (70, 10, 20)


def test_item_names_are_safe_and_distinct():
    a, b = item_name("a/b"), item_name("a_b")
    assert a != b and "/" not in a and a.startswith("a_b-")


def test_word_alignment_with_recognised_words_and_a_timing_file(clips, tmp_path, fake_log):
    rows = _good_rows()
    man = _manifest(clips / "m_align.csv", rows)
    cfg = FAKE.model_copy(update={"align": "words"})
    store = run_extract(man, tmp_path / "store", config=cfg).store
    tr = store.split("train")
    # 1.5 s of audio -> the fake recogniser hears 3 words; every modality has one step per word
    assert {m: tr.lengths[m].tolist() for m in store.modalities} == {m: [3, 3, 3] for m in store.modalities}
    assert store.aligned and _calls(fake_log, "fake_asr") == 6
    timings = tmp_path / "words.csv"
    timings.write_text("id,word,start,end\n" + "".join(f"u{k},hi,0.0,0.5\nu{k},you,0.5,1.2\n" for k in range(6)))
    cfg = FAKE.model_copy(update={"align": "words", "asr": "off", "word_timings": str(timings)})
    store = run_extract(man, tmp_path / "store2", config=cfg).store
    assert store.split("test").lengths["audio"].tolist() == [2, 2]
    assert _calls(fake_log, "fake_asr") == 6  # the timing file replaced the recogniser
    with pytest.raises(ConfigError, match="needs word times"):
        run_extract(man, tmp_path / "store3", config={**FAKE.model_dump(), "align": "words", "asr": "off"})


def test_config_file_with_overrides_and_misspelt_keys(tmp_path):
    from mmerkit.extract.config import make_config

    f = tmp_path / "extract.yaml"
    f.write_text("fps: 10\naudio: none\nvisual_params: {landmarks: true}\n")
    cfg = make_config(f, fps=2.5)
    assert cfg.fps == 2.5 and cfg.audio is None and cfg.visual_params == {"landmarks": True}
    assert cfg.modalities() == ["text", "visual"] and cfg.fingerprint() != make_config(f).fingerprint()
    f.write_text("fsp: 10\n")
    with pytest.raises(ConfigError, match="extraction config, fsp: Extra inputs are not permitted"):
        make_config(f)
    with pytest.raises(ConfigError, match="every modality is off"):
        make_config(None, text="none", audio="none", visual="none")


def test_an_edited_word_timing_file_is_not_reused(clips, tmp_path, fake_log):
    man = _manifest(clips / "m_timing.csv", _good_rows())
    timings = tmp_path / "words.csv"
    timings.write_text("id,word,start,end\n" + "".join(f"u{k},hi,0.0,0.5\n" for k in range(6)))
    cfg = FAKE.model_copy(update={"align": "words", "asr": "off", "word_timings": str(timings)})
    assert run_extract(man, tmp_path / "s", config=cfg).store.split("train").lengths["audio"].tolist() == [1, 1, 1]
    timings.write_text("id,word,start,end\n" + "".join(f"u{k},hi,0.0,0.5\nu{k},yo,0.5,1.0\n" for k in range(6)))
    res = run_extract(man, tmp_path / "s", config=cfg, overwrite=True)
    assert res.skipped == 0 and res.store.split("train").lengths["audio"].tolist() == [2, 2, 2]


def test_empty_labels_is_spelt_as_in_the_converters(tmp_path):
    base = {"id": "a", "media": "x.mp4", "labels": "joy"}
    rows = [{**base, "split": "train"}, {**base, "id": "b", "labels": "", "split": "train"},
            {**base, "id": "c", "split": "valid"}, {**base, "id": "d", "split": "test"}]
    path = _manifest(tmp_path / "m.csv", rows)
    m = read_media_manifest(path, empty_labels="allow")
    assert m.labels.sum(1).tolist() == [1, 0, 1, 1]
    with pytest.raises(ConfigError, match="--empty-labels 'yes': expected 'reject' or 'allow'"):
        read_media_manifest(path, empty_labels="yes")
