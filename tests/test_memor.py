import json

import numpy as np
import pytest

from mmerkit.data.catalogue import CONVERTERS
from mmerkit.data.memor import CHARACTERS, convert_memor, label_names
from mmerkit.errors import DataError

DA, DT, DV, DP = 5, 4, 3, 6


def build_release(root, n_clips=12, seed=0):
    """A miniature MEmoR data directory in the release layout (+ our visual .npz)."""
    rng = np.random.default_rng(seed)
    (root / "features").mkdir(parents=True)
    data, audio, text, visual, annos_p, annos_f = {}, {}, {}, {}, [], []
    for c in range(n_clips):
        clip = f"s01_e0{c}_c01"
        n_seg = int(rng.integers(2, 5))
        on = sorted(rng.choice(7, size=3, replace=False).tolist())
        speakers = [on[0], on[1]] + [on[0]] * (n_seg - 2)  # on[2] never speaks
        data[clip] = {"on_character": on, "speakers": speakers, "seg_start": list(range(n_seg)),
                      "seg_end": list(range(1, n_seg + 1)), "seg_ori_ind": [10 + i for i in range(n_seg)],
                      "start": 0}
        for ii in range(n_seg):
            audio[f"{clip}+{10 + ii}"] = rng.normal(size=DA).tolist()
            text[f"{clip}+{10 + ii}"] = rng.normal(size=DT).tolist()
            for ch in on[:2]:
                visual[f"{clip}+{ch}+{ii}"] = rng.normal(size=DV).astype(np.float32)
        for ch, emos in ((on[0], ["joy", "anger"]), (on[2], ["sadness"])):
            for k, e in enumerate(emos):
                annos_p.append({"clip": clip, "character": ch, "moment": k + 0.5, "emotion": e})
                annos_f.append({"clip": clip, "character": ch, "moment": k + 0.5,
                                "emotion": "serenity" if e == "joy" else e})
    (root / "data.json").write_text(json.dumps(data))
    (root / "anno.json").write_text(json.dumps({"primary": annos_p, "fine_grained": annos_f}))
    n = len(annos_p)
    cut = int(n * 0.75) // 3 * 3  # whole clips (3 annotations each) on either side
    (root / "train_id.txt").write_text("\n".join(map(str, range(cut))) + "\n")
    (root / "test_id.txt").write_text("\n".join(map(str, range(cut, n))) + "\n")
    (root / "features" / "audio_features.json").write_text(json.dumps(audio))
    (root / "features" / "text_features.json").write_text(json.dumps(text))
    np.savez(root / "features" / "visual_features.npz", **visual)
    pers = rng.uniform(0, 1, (len(CHARACTERS), DP))
    (root / "features" / "character_features.csv").write_text(
        "\n".join(",".join(f"{v:.6f}" for v in r) for r in pers) + "\n")
    return data, pers


def test_convert_protocol(tmp_path):
    root = tmp_path / "memor"
    data, pers = build_release(root)
    store = convert_memor(root, tmp_path / "s")
    assert store.labels == label_names("primary") and len(store.labels) == 9
    assert store.modalities == {"text": DT, "visual": DV, "audio": DA}
    assert store.spec().extras == {"personality": DP, "clip": 1, "character": 1}
    assert store.aligned is False
    n_train_samples = 9 * 2  # 9 train clips, 2 annotated persons each
    assert store.splits == {"train": n_train_samples - int(n_train_samples * 0.2),
                            "valid": int(n_train_samples * 0.2), "test": 6}
    normed = pers / np.linalg.norm(pers, axis=0, keepdims=True)
    seen = 0
    for split in store.splits:
        sp = store.split(split)
        for i, sid in enumerate(sp.ids):
            clip, name = sid.split("+")
            ch = CHARACTERS.index(name)
            info = data[clip]
            speaker_segs = sum(s == ch for s in info["speakers"])
            assert sp.lengths["audio"][i] == speaker_segs == sp.lengths["text"][i]
            if ch == info["on_character"][0]:
                assert sp.labels[i].tolist() == [0, 1, 1, 0, 0, 0, 0, 0, 0]  # joy + anger
                assert sp.lengths["visual"][i] == len(info["seg_start"])
            else:  # the silent, invisible person: audio/text/visual missing, sadness only
                assert speaker_segs == 0 and sp.lengths["visual"][i] == 0
                assert sp.labels[i].tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0]
            np.testing.assert_allclose(sp.extras["personality"][i], normed[ch], atol=1e-5)
            assert sp.extras["character"][i, 0] == ch
            assert sp.extras["clip"][i, 0] == sorted(data).index(clip)
            seen += 1
    assert seen == 24
    assert CONVERTERS.entry("memor").info["description"]


def test_fine_grained_segments_and_seed(tmp_path):
    root = tmp_path / "memor"
    data, _ = build_release(root)
    a = CONVERTERS.get("memor")(root, tmp_path / "a", label_set="fine", sequence="segments",
                            modalities=["audio", "text"], personality=False)
    assert len(a.labels) == 14 and a.aligned and set(a.modalities) == {"audio", "text"}
    assert set(a.spec().extras) == {"clip", "character"}
    sp = a.split("test")
    i = next(k for k, s in enumerate(sp.ids) if CHARACTERS.index(s.split("+")[1]) == data[s.split("+")[0]]["on_character"][0])
    clip = sp.ids[i].split("+")[0]
    assert sp.lengths["audio"][i] == len(data[clip]["seg_start"])  # every segment a step, zeros where silent
    assert sp.labels[i, a.labels.index("serenity")] == 1
    b = convert_memor(root, tmp_path / "b", seed=1)
    c = convert_memor(root, tmp_path / "c")
    assert b.split("valid").ids != c.split("valid").ids


def test_errors(tmp_path):
    root = tmp_path / "memor"
    build_release(root)
    with pytest.raises(DataError, match="not a directory"):
        convert_memor(tmp_path / "nope", tmp_path / "s")
    with pytest.raises(DataError, match="label_set='x'"):
        convert_memor(root, tmp_path / "s", label_set="x")
    annos = json.loads((root / "anno.json").read_text())
    bad = json.loads(json.dumps(annos))
    bad["primary"][1]["emotion"] = "serenity"
    (root / "anno.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"anno.json, annotation 1: emotion 'serenity' is not one of the 9"):
        convert_memor(root, tmp_path / "s")
    bad = json.loads(json.dumps(annos))
    bad["primary"][0]["character"] = "wolowitz"
    (root / "anno.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"annotation 0: unknown character 'wolowitz'"):
        convert_memor(root, tmp_path / "s")
    (root / "anno.json").write_text(json.dumps(annos))
    ids = (root / "test_id.txt").read_text()
    (root / "test_id.txt").write_text(ids + "0\n")
    with pytest.raises(DataError, match=r"annotation 0 .* is in both"):
        convert_memor(root, tmp_path / "s")
    (root / "test_id.txt").write_text(ids + "999\n")
    with pytest.raises(DataError, match=r"test_id.txt, line \d+: annotation index 999"):
        convert_memor(root, tmp_path / "s")
    (root / "test_id.txt").write_text(ids)
    pers = (root / "features" / "character_features.csv").read_text()
    (root / "features" / "character_features.csv").write_text(pers + "x,y\n")
    with pytest.raises(DataError, match=r"character_features.csv, line 9: expected comma-separated numbers"):
        convert_memor(root, tmp_path / "s")
    (root / "features" / "character_features.csv").unlink()
    with pytest.raises(DataError, match="personality=False"):
        convert_memor(root, tmp_path / "s")
    (root / "features" / "character_features.csv").write_text(pers)
    audio = json.loads((root / "features" / "audio_features.json").read_text())
    key = sorted(audio)[3]
    audio[key] = audio[key][:2]
    (root / "features" / "audio_features.json").write_text(json.dumps(audio))
    with pytest.raises(DataError, match=rf"audio vector '{key.replace('+', '[+]')}' has 2 values"):
        convert_memor(root, tmp_path / "s")
    (root / "features" / "audio_features.json").unlink()
    with pytest.raises(DataError, match=r"no audio features"):
        convert_memor(root, tmp_path / "s")
    assert not (tmp_path / "s").exists() and not list(tmp_path.glob(".s.tmp-*"))
