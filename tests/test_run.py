"""mmerkit.run: run names, the store fingerprint, and reading run directories back."""

import json
import shutil

import numpy as np
import pytest
from helpers import LABELS, random_split, toy_store

from mmerkit.data.store import FeatureStore, write_store
from mmerkit.errors import ConfigError, MMERError
from mmerkit.run import Run, data_name, new_run_dir, resumable_run_dir, store_fingerprint


def test_fingerprint_survives_a_move_and_sees_a_reconversion(tmp_path):
    store = toy_store(tmp_path / "a")
    shutil.copytree(store.path, tmp_path / "b")
    assert store_fingerprint(FeatureStore(tmp_path / "b")) == store_fingerprint(store)
    (tmp_path / "b" / "train" / "cache.tmp").write_text("x")  # a file beside the arrays does not count
    assert store_fingerprint(FeatureStore(tmp_path / "b")) == store_fingerprint(store)
    other = toy_store(tmp_path / "c", n_train=65)  # one more training sample
    assert store_fingerprint(other) != store_fingerprint(store)
    relabelled = write_store(tmp_path / "d", {s: random_split(8, i) for i, s in enumerate(("train", "valid", "test"))},
                             ["x", "y", "z"], name="toy", source="toy")
    same_shape = write_store(tmp_path / "e", {s: random_split(8, i) for i, s in enumerate(("train", "valid", "test"))},
                             LABELS, name="toy", source="toy")
    assert store_fingerprint(relabelled) != store_fingerprint(same_shape)


def test_names_are_safe_and_taken_names_are_numbered(tmp_path):
    store = write_store(tmp_path / "my store [v2]", {"train": random_split(4, 0)}, LABELS)
    assert data_name(store) == "my-store-v2"
    path, note = new_run_dir(tmp_path / "runs", "carat", store, 3)
    assert path.name == "carat_my-store-v2_seed3" and note is None
    path.mkdir(parents=True)
    again, note = new_run_dir(tmp_path / "runs", "carat", store, 3)
    assert again.name == "carat_my-store-v2_seed3_2" and "already exists" in note


def test_resume_finds_the_newest_unfinished_run_only(tmp_path):
    store = toy_store(tmp_path / "s")
    out = tmp_path / "runs"
    for name, files in (("early_fusion_toy_seed1", ["last.ckpt", "test_metrics.json"]),
                        ("early_fusion_toy_seed1_2", ["last.ckpt"]),
                        ("early_fusion_toy_seed10", ["last.ckpt"])):  # another seed: never matched
        (out / name).mkdir(parents=True)
        for f in files:
            (out / name / f).write_text("{}")
    assert resumable_run_dir(out, "early_fusion", store, 1).name == "early_fusion_toy_seed1_2"
    with pytest.raises(ConfigError, match=r"no unfinished run early_fusion_toy_seed2\[_N\]"):
        resumable_run_dir(out, "early_fusion", store, 2)


def test_run_reads_back_and_old_runs_keep_their_dataset(tmp_path):
    run = Run(tmp_path / "carat_mosei-aligned_seed2")
    with pytest.raises(MMERError, match="is not a run directory"):
        run.read_config()
    run.path.mkdir()
    run.config_path.write_text("model: {name: carat}\n")
    run.env_path.write_text(json.dumps({"store": "stores/mosei", "store_name": "mosei"}))  # before run.py
    assert run.dataset == "mosei-aligned" and not run.finished and not run.resumable
    run.write_history([{"epoch": 1, "split": "train", "loss/total": 0.5},
                       {"epoch": 1, "split": "valid", "micro_f1": 0.25}])
    assert run.metrics_csv.read_text().splitlines()[0] == "epoch,split,loss/total,micro_f1"
    assert run.read_history()[1] == {"epoch": 1.0, "split": "valid", "loss/total": None, "micro_f1": 0.25}
    run.write_results({"micro_f1": 0.3}, {"micro_f1": 0.2, "seed": 2})
    assert run.finished and run.read_test_metrics()["seed"] == 2
    assert np.isclose(json.loads(run.valid_metrics_path.read_text())["micro_f1"], 0.3)


def test_config_yaml_records_every_model_field_although_the_yamls_are_sparse():
    """The packaged YAMLs hold only departures from the config class; a run's config.yaml has all fields."""
    import yaml

    from mmerkit import api
    from mmerkit.config import packaged_yaml, to_yaml
    from mmerkit.models.base import model_class

    for name, overrides in (("carat", ["model.hidden_size=16"]), ("tailor", []), ("early_fusion", []), ("br", [])):
        cfg = api.build_config(name, None, None, overrides)
        fields = set(model_class(name).config_class.model_fields)
        assert len(packaged_yaml("models", name).get("model", {})) < len(fields), name
        recorded = yaml.safe_load(to_yaml(cfg))["model"]
        assert set(recorded) == fields, name
        assert cfg.model["name"] == name
    assert api.build_config("carat", None, None, ["model.hidden_size=16"]).model["hidden_size"] == 16
