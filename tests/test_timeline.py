"""Emotions over time (issue 24, item 1): `mmer predict EXPORT --media long.mp4 --window 4 --hop 2`
and `Predictor.predict_timeline`, with the fake extractors (tests/fake_extractors.py) on
generated recordings: windows, missing modalities, each extractor once over the file, the
CSV and the plot."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av", reason="PyAV writes and decodes the test clips: pip install 'mmerkit[media]'")

from helpers import extracted_export, run_cli  # noqa: E402

from mmerkit.extract.decode import decode  # noqa: E402
from mmerkit.extract.demo import write_recording  # noqa: E402
from mmerkit.extract.timeline import decode_stream  # noqa: E402
from mmerkit.predict import Predictor, Timeline  # noqa: E402

torch.set_num_threads(1)


def tone(seconds: float, freq: float = 220.0, sample_rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)


def dark_then_colour(switch: float):
    """Black frames (the fake face extractor's 'no face') before `switch` seconds, colour after."""
    dark, lit = np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), (200, 80, 40), np.uint8)
    return lambda t: dark if t < switch else lit


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return extracted_export(tmp_path_factory.mktemp("timeline"))


@pytest.fixture()
def fake_log(tmp_path, monkeypatch) -> Path:
    log = tmp_path / "calls.log"
    monkeypatch.setenv("MMERKIT_FAKE_LOG", str(log))
    return log


def calls(log: Path, name: str) -> int:
    return sum(line.startswith(name + "\t") for line in log.read_text().splitlines()) if log.exists() else 0


def test_streamed_decode_equals_whole_file_decode(tmp_path):
    path = write_recording(tmp_path / "r.mp4", 7.3, picture=dark_then_colour(3.0), wave=tone(7.3))
    pieces = list(decode_stream(path, fps=5, sample_rate=16000, piece=2.0))
    assert [p.start for p in pieces] == [0.0, 2.0, 4.0, 6.0]
    whole = decode(path, fps=5)
    np.testing.assert_array_equal(np.concatenate([p.audio for p in pieces]), whole.audio)
    np.testing.assert_array_equal(np.concatenate([p.frames for p in pieces]), whole.frames)


def test_timeline_rows_windows_and_missing_face(export, tmp_path, fake_log):
    path = write_recording(tmp_path / "long.mp4", 11.0, picture=dark_then_colour(5.0), wave=tone(11.0))
    tl = Predictor.from_pretrained(export).predict_timeline(path, window=4, hop=2)
    assert [(s, e) for s, e in zip(tl.starts, tl.ends)] == [(0, 4), (2, 6), (4, 8), (6, 10), (8, 11)]
    # the face is missing only where every frame is dark; not filled with zeros
    assert tl.missing == [["visual"], [], [], [], []]
    assert np.isfinite(tl.probs).all() and ((tl.probs >= 0) & (tl.probs <= 1)).all()
    assert all(m in ("text", "audio", "visual") for m in tl.modality)
    assert tl.modality[0] != "visual"  # never a modality the window lacks
    # words go to windows by their timestamps (the fake recogniser says w0 at 0-0.4 s, w1 at 0.5-0.9 s, ...)
    assert tl.transcript[1].split()[0] == "w4" and len(tl.transcript[1].split()) == 8
    # each extractor ran once over the file (audio and recognition per 30-second block, faces per piece)
    assert calls(fake_log, "fake_asr") == 1 and calls(fake_log, "fake_audio") == 1
    assert calls(fake_log, "fake_visual") == 6  # 2-second pieces


def test_cost_does_not_grow_with_the_overlap(export, tmp_path, fake_log):
    path = write_recording(tmp_path / "long.mp4", 9.0, picture=dark_then_colour(0.0), wave=tone(9.0))
    p = Predictor.from_pretrained(export)
    p.predict_timeline(path, window=4, hop=4)
    few = {n: calls(fake_log, n) for n in ("fake_asr", "fake_audio", "fake_visual")}
    fake_log.unlink()
    dense = p.predict_timeline(path, window=4, hop=0.5)
    assert len(dense.starts) == 11
    assert {n: calls(fake_log, n) for n in few} == few


def test_windows_match_features_of_the_same_cut(export, tmp_path):
    """A window's face and audio features are those of the file cut at the window."""
    from mmerkit.extract.featurize import featurizer
    from mmerkit.extract.timeline import timeline_windows

    path = write_recording(tmp_path / "r.mp4", 8.0, picture=lambda t: np.full((32, 32, 3), int(20 + 25 * t), np.uint8),
                           wave=tone(8.0))
    fz = featurizer(Predictor.from_pretrained(export).meta)
    [w] = [w for w in timeline_windows(fz, path, window=4, hop=2) if w.start == 2.0]
    clip = fz._clip(path, 2.0, 6.0, "cut")
    np.testing.assert_allclose(w.features["visual"], fz._run("visual", fz.extractors["visual"], clip).values)
    assert len(w.features["audio"]) == 40  # 10 steps a second over 4 s


def test_no_audio_track_marks_audio_and_text_missing(export, tmp_path):
    path = write_recording(tmp_path / "silent.mp4", 6.0, picture=dark_then_colour(0.0), wave=None)
    tl = Predictor.from_pretrained(export).predict_timeline(path, window=4, hop=2)
    assert tl.missing == [["text", "audio"]] * 2 and np.isfinite(tl.probs).all()
    assert tl.transcript == ["", ""] and set(tl.modality) == {"visual"}


def test_a_window_with_nothing_gets_no_prediction(export, tmp_path):
    path = write_recording(tmp_path / "dark.mp4", 3.0, picture=dark_then_colour(99.0), wave=None)
    tl = Predictor.from_pretrained(export).predict_timeline(path, window=4, hop=2)
    assert len(tl.starts) == 1 and tl.ends[0] == 3.0  # shorter than a window: one window, the file
    assert np.isnan(tl.probs).all() and tl.modality == [None] and not tl.predicted.any()
    row = tl.rows()[0]
    assert row["missing"] == "text;audio;visual" and row["labels"] == ""


def test_cli_timeline_csv_and_plot(export, tmp_path, capsys):
    path = write_recording(tmp_path / "long.mp4", 9.0, picture=dark_then_colour(4.5), wave=tone(9.0))
    code, out, err = run_cli(capsys, "predict", str(export), "--media", str(path), "--window", "4", "--hop", "2",
                             "--out", str(tmp_path / "tl.csv"), "--plot", str(tmp_path / "tl.png"))
    assert code == 0, err
    assert "4 windows" in out and "windows without visual 1" in out
    with open(tmp_path / "tl.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:2] == ["start", "end"] and {"anger", "joy", "sad", "labels", "modality", "missing",
                                                      "transcript"} <= set(rows[0])
    assert [float(r["start"]) for r in rows] == [0, 2, 4, 6] and rows[0]["missing"] == "visual"
    assert (tmp_path / "tl.png").stat().st_size > 5000
    # without --out: a table on stdout
    code, out, err = run_cli(capsys, "predict", str(export), "--media", str(path), "--window", "4")
    assert code == 0 and "emotions over time" in out and "0:02.0" in out


@pytest.mark.parametrize("args, says", [
    (["--window", "4", "--hop", "5"], "--hop 5.0 is longer than --window"),
    (["--window", "0"], "--window must be a positive"),
    (["--hop", "2"], "give --window"),
    (["--window", "4", "--plot", "x.txt"], ".png, .pdf or .svg"),
    (["--window", "4", "--transcript", "hi"], "exactly one --media"),
])
def test_cli_timeline_refusals_exit_2(export, tmp_path, capsys, args, says):
    path = write_recording(tmp_path / "r.mp4", 2.0, picture=dark_then_colour(0.0), wave=tone(2.0))
    code, out, err = run_cli(capsys, "predict", str(export), "--media", str(path), *args)
    assert code == 2 and says in err and "Traceback" not in err, err
    assert not list(tmp_path.glob("*.csv"))


def test_plot_of_an_hour_is_readable(tmp_path):
    """An hour at hop 2 s: 1,800 columns in one image, clock ticks in h:mm:ss."""
    from mmerkit.viz import plot_timeline, timeline_figure

    n, rng = 1800, np.random.default_rng(0)
    probs = rng.random((n, 3))
    probs[100:120] = np.nan  # windows without any modality: grey
    tl = Timeline(["anger", "joy", "sad"], np.arange(n) * 2.0, np.arange(n) * 2.0 + 4, probs,
                  (probs > 0.7).astype(np.uint8), ["audio"] * n, [[]] * n, [""] * n)
    fig = timeline_figure(tl, "an hour")
    ax = fig.axes[0]
    fig.canvas.draw()
    ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert 4 <= len(ticks) <= 14 and any(t.startswith("1:") and t.count(":") == 2 for t in ticks), ticks
    assert [t.get_text() for t in ax.get_yticklabels()] == ["anger", "joy", "sad"]
    assert plot_timeline(tl, tmp_path / "hour.png").stat().st_size > 10000
    assert os.path.getsize(tmp_path / "hour.png") < 2_000_000


def test_mediapipe_tracks_one_face_across_pieces():
    """The face landmarker runs once in VIDEO mode over the whole file: pieces of a recording
    tracked in one session give the features of the whole recording tracked at once."""
    pytest.importorskip("mediapipe")
    pytest.importorskip("skimage")
    from mmerkit.extract.base import Clip
    from mmerkit.extract.catalogue import create_extractor
    from mmerkit.extract.demo import _face

    face = create_extractor("mediapipe", fps=5.0)
    frames = np.stack([np.roll(_face(), 3 * k, axis=1) for k in range(10)])
    whole = face.extract(Clip("whole", None, 16000, frames, 5.0))
    with face.stream() as track:
        parts = [track(Clip(f"p{k}", None, 16000, frames[k * 5:(k + 1) * 5], 5.0, start=k * 1.0)) for k in range(2)]
    assert whole.mask.all() and all(p.mask.all() for p in parts)
    np.testing.assert_allclose(np.concatenate([p.values for p in parts]), whole.values, atol=1e-5)


def write_webm(path: Path, seconds: float, video_codec: str) -> Path:
    """A WebM as a browser's MediaRecorder writes it: VP8/VP9 + Opus, live (no duration)."""
    import av

    with av.open(str(path), "w", format="webm", options={"live": "1"}) as out:
        vs = out.add_stream(video_codec, rate=10)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        aus = out.add_stream("libopus", rate=48000)
        aus.layout = "mono"
        t = np.arange(960) / 48000
        for k in range(int(seconds * 10)):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), (180, 20 * k % 256, 60), np.uint8), format="rgb24")
            frame.pts = k
            packets = list(vs.encode(frame))
            for j in range(5):  # 5 Opus frames of 20 ms per video frame
                n = k * 5 + j
                wave = (0.3 * np.sin(2 * np.pi * 220 * (t + n * 0.02)))[None].astype(np.float32)
                af = av.AudioFrame.from_ndarray(wave, format="flt", layout="mono")
                af.sample_rate, af.pts = 48000, n * 960
                packets += list(aus.encode(af))
            for packet in packets:
                out.mux(packet)
        for packet in [*vs.encode(), *aus.encode()]:
            out.mux(packet)
    return path


@pytest.mark.parametrize("codec", ["libvpx", "libvpx-vp9"])
def test_browser_webm_recordings_decode_and_give_a_timeline(export, tmp_path, codec):
    path = write_webm(tmp_path / "live.webm", 5.0, codec)
    pieces = list(decode_stream(path, fps=5, sample_rate=16000))
    assert sum(len(p.audio) for p in pieces) == pytest.approx(5 * 16000, abs=1600)
    assert sum(len(p.frames) for p in pieces) == pytest.approx(25, abs=1)
    tl = Predictor.from_pretrained(export).predict_timeline(path, window=2, hop=2)
    assert len(tl.starts) >= 2 and tl.missing[0] == [] and np.isfinite(tl.probs).all()


def test_a_words_aligned_model_gets_one_step_per_word(tmp_path):
    """An export of a word-aligned store: each window's modalities are averaged over its words;
    a window without words has nothing to predict from (all missing), not zeros."""
    from mmerkit.extract.featurize import featurizer
    from mmerkit.extract.timeline import timeline_windows

    export = extracted_export(tmp_path / "aligned", align="words")
    p = Predictor.from_pretrained(export)
    path = write_recording(tmp_path / "r.mp4", 6.0, picture=dark_then_colour(0.0), wave=tone(6.0))
    windows = list(timeline_windows(featurizer(p.meta), path, window=4, hop=2))
    assert [len(w.transcript.split()) for w in windows] == [8, 8]
    assert all({m: len(x) for m, x in w.features.items()} == {"text": 8, "audio": 8, "visual": 8} for w in windows)
    tl = p.predict_timeline(path, window=4, hop=2)
    assert np.isfinite(tl.probs).all() and tl.missing == [[], []]
