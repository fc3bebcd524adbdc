"""`mmerkit.client.Client`: the remote twin of Predictor, against a real server on 127.0.0.1."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'mmerkit[serve]'")

from serve_helpers import (  # noqa: E402
    fake_features,
    fake_featurizer,
    media_export,
    running,
    train_export,
    write_clip,
)

from mmerkit.client import Client, ServerError, arrays_to_samples  # noqa: E402
from mmerkit.errors import DataError  # noqa: E402
from mmerkit.predict import Predictor  # noqa: E402
from mmerkit.serve import ServeSettings, create_app  # noqa: E402

TOKEN = "client-token"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("client")
    export = media_export(train_export(root), root / "media")
    app = create_app(export, ServeSettings(token=TOKEN, media_workers=0, max_samples=8), featurizer=fake_featurizer)
    with running(app) as url:
        yield url, Predictor.from_pretrained(export), write_clip(root / "clip.mp4", 1.0)


def test_predict_arrays_like_predictor(setup):
    url, predictor, _ = setup
    rng = np.random.default_rng(0)
    arrays = {"text": rng.normal(size=(4, 5, 8)).astype("f4"), "audio": rng.normal(size=(4, 3, 4)).astype("f4"),
              "text_len": np.array([5, 1, 3, 2]), "audio_len": np.array([3, 0, 2, 3])}
    preds = Client(url, TOKEN).predict(arrays)
    ref = predictor.predict(arrays)
    got = np.array([[p["probabilities"][lab] for lab in predictor.labels] for p in preds])
    np.testing.assert_allclose(got, ref.probs, atol=1e-5)
    assert [p["labels"] for p in preds] == ref.label_sets
    assert preds[1]["modalities_present"] == ["text"]


def test_predict_sample_list_npz_and_media(setup, tmp_path):
    url, predictor, clip = setup
    client = Client(url, TOKEN)
    x = np.random.default_rng(1).normal(size=(2, 8)).astype("f4")
    [p] = client.predict([{"id": "one", "text": x, "audio": None}])
    assert p["id"] == "one"
    ref = predictor.predict({"text": x[None], "audio": np.zeros((1, 1, 4), "f4"), "audio_len": np.array([0])})
    np.testing.assert_allclose([p["probabilities"][lab] for lab in predictor.labels], ref.probs[0], atol=1e-5)
    npz = tmp_path / "f.npz"
    np.savez(npz, text=x[None], ids=np.array(["z"]))
    assert client.predict(npz)[0]["id"] == "z"
    pred = client.predict_media(clip, transcript="so happy")
    feats = fake_features(1.0, "so happy")
    ref = predictor.predict({m: v[None] if len(v) else np.zeros((1, 1, v.shape[1]), "f4") for m, v in feats.items()}
                            | {f"{m}_len": np.array([len(v)]) for m, v in feats.items()})
    np.testing.assert_allclose([pred["probabilities"][lab] for lab in predictor.labels], ref.probs[0], atol=1e-5)
    assert pred["transcript"] == "so happy"


def test_model_health_and_errors(setup):
    url, predictor, _ = setup
    client = Client(url, TOKEN)
    assert client.health() and client.model()["labels"] == predictor.labels
    with pytest.raises(ServerError) as e:
        Client(url, "wrong").model()
    assert e.value.status == 401 and e.value.field == "Authorization"
    with pytest.raises(ServerError) as e:
        client.predict([{"text": np.zeros((2, 7))}])
    assert e.value.status == 422 and e.value.field == "samples[0].text" and "(T, 8)" in str(e.value)
    with pytest.raises(ServerError) as e:
        client.predict({"text": np.zeros((9, 2, 8))})
    assert e.value.status == 413
    assert not Client("http://127.0.0.1:9", timeout=2).health()  # nothing listens there


def test_arrays_to_samples_cuts_padding():
    samples = arrays_to_samples({"a": np.ones((2, 3, 2)), "a_len": np.array([3, 0]), "b": np.ones((2, 1, 4)),
                                 "c": None})
    assert samples[0]["a"] == [[1.0, 1.0]] * 3 and samples[1]["a"] is None
    assert samples[1]["b"] == [[1.0] * 4] and samples[0]["c"] is None


def test_one_sample_and_many_samples_are_distinct_forms(setup):
    """Issue 20 item 3: (T, D) arrays for one sample went out as T one-step samples; None for a
    missing modality raised an IndexError. Now: predict_one(sample) / predict(batch, N first),
    a 2-D array in the batch form is refused as ambiguous, and None means missing."""
    url, predictor, _ = setup
    client = Client(url, TOKEN)
    rng = np.random.default_rng(3)
    text, audio = rng.normal(size=(5, 8)).astype("f4"), rng.normal(size=(5, 4)).astype("f4")
    with pytest.raises(DataError, match=r"'text' has shape \(5, 8\), which is ambiguous.*predict_one"):
        client.predict({"text": text, "audio": audio})
    with pytest.raises(DataError, match="ambiguous"):
        predictor.predict({"text": text, "audio": audio})
    one = client.predict_one({"text": text, "audio": audio, "id": "me"})
    ref = predictor.predict_one({"text": text, "audio": audio})
    assert one["id"] == "me" and len(ref.ids) == 1
    np.testing.assert_allclose([one["probabilities"][lab] for lab in predictor.labels], ref.probs[0], atol=1e-5)
    # None: the modality is missing (the same as a length of 0)
    no_audio = client.predict_one({"text": text, "audio": None})
    assert no_audio["modalities_present"] == ["text"]
    ref = predictor.predict({"text": text[None], "audio": None})
    np.testing.assert_allclose([no_audio["probabilities"][lab] for lab in predictor.labels], ref.probs[0], atol=1e-5)
    many = client.predict({"text": np.stack([text, text]), "audio": None})
    assert len(many) == 2 and all(p["modalities_present"] == ["text"] for p in many)
    with pytest.raises(DataError, match="one sample is \\(T, D\\)"):
        predictor.predict_one({"text": text[None], "audio": None})
    with pytest.raises(DataError, match="every modality is None"):
        client.predict({"text": None, "audio": None})
    with pytest.raises(DataError, match="'audio': None"):
        predictor.predict({"text": text[None]})

