import json

import numpy as np
import pytest
import torch
from helpers import LABELS, QUIET, TINY, random_split, toy_store

from mmerkit import api
from mmerkit.checkpoint import load_training_state
from mmerkit.data.store import write_store
from mmerkit.errors import CheckpointError, ConfigError, DataError
from mmerkit.metrics import binarize, compute_metrics
from mmerkit.predict import Predictor

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    store = toy_store(root / "store")
    [res] = api.train("early_fusion", store.path, out=root / "runs", epochs=3, overrides=TINY,
                      batch_size=16, progress=False)
    return store, res


def test_run_directory_contents(trained):
    store, res = trained
    d = res.run_dir
    for name in ("config.yaml", "env.json", "metrics.csv", "last.ckpt", "best.ckpt", "test_metrics.json",
                 "export/config.json", "export/model.safetensors"):
        assert (d / name).exists(), name
    test = json.loads((d / "test_metrics.json").read_text())
    for key in ("micro_f1", "micro_precision", "micro_recall", "macro_f1", "accuracy", "hamming_loss", "best_epoch"):
        assert key in test
    rows = (d / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,split") and len(rows) == 1 + 2 * 3
    env = json.loads((d / "env.json").read_text())
    assert env["seed"] == 1 and env["torch"] == torch.__version__


def test_test_split_is_evaluated_whole_with_best_weights(trained):
    store, res = trained
    pred = Predictor.from_pretrained(res.run_dir / "export").predict(store.path, split="test")
    assert len(pred.ids) == store.splits["test"]  # no drop_last, no shuffling on test
    y = np.asarray(store.split("test").labels)
    m = compute_metrics(y, binarize(pred.probs, res.threshold), LABELS)
    assert m["micro_f1"] == pytest.approx(res.test_metrics["micro_f1"], abs=1e-9)
    best = load_training_state(res.run_dir / "best.ckpt")
    assert best["train_state"]["best_epoch"] == res.best_epoch


def test_evaluate_and_threshold_search_use_validation(trained):
    store, res = trained
    saved = api.evaluate(res.run_dir, split="test")
    assert saved["micro_f1"] == pytest.approx(res.test_metrics["micro_f1"])
    searched = api.evaluate(res.run_dir, split="test", threshold="search")
    assert 0.0 < searched["threshold"] < 1.0
    dropped = api.evaluate(res.run_dir, split="test", drop_modality="audio")
    # the same as predicting the test split with the audio removed from every batch
    from mmerkit.predict import forward_batches, split_batches

    model = api.load_run(res.run_dir).model
    out = forward_batches(model, split_batches(store, "test"), drop_modality="audio")
    want = compute_metrics(out.labels, binarize(out.probs, res.threshold), LABELS)
    assert dropped["micro_f1"] == pytest.approx(want["micro_f1"])
    full = forward_batches(model, split_batches(store, "test"))
    assert np.abs(full.probs - out.probs).max() > 1e-4  # the audio was really removed


def test_predict_csv_and_arrays(trained, tmp_path):
    store, res = trained
    preds = api.predict(res.run_dir / "export", store.path, split="test", out=tmp_path / "p.csv")
    header = (tmp_path / "p.csv").read_text().splitlines()[0]
    assert header == "id,happy,sad,anger,labels"
    assert preds.ids[0] == "s3-0"
    sp = store.split("test")
    arrays = {m: np.asarray(sp.features[m]) for m in store.modalities}
    arrays.update({f"{m}_len": np.asarray(sp.lengths[m]) for m in store.modalities})
    again = Predictor.from_pretrained(res.run_dir / "export").predict(arrays)
    np.testing.assert_allclose(again.probs, preds.probs, atol=1e-5)


def test_predict_rejects_wrong_inputs(trained, tmp_path):
    store, res = trained
    p = Predictor.from_pretrained(res.run_dir / "export")
    with pytest.raises(DataError, match="no 'audio' features"):
        p.predict({"text": np.zeros((2, 6, 8), np.float32)})
    with pytest.raises(DataError, match=r"expected \(N, T, 4\)"):
        p.predict({"text": np.zeros((2, 6, 8), np.float32), "audio": np.zeros((2, 6, 5), np.float32)})
    other = write_store(tmp_path / "o", {"test": random_split(4, 1, dims=(("text", 8), ("visual", 4)))}, LABELS)
    with pytest.raises(DataError, match="missing modalities \\['audio'\\]"):
        p.predict(other.path)


def test_export_of_another_label_set_is_rejected(trained, tmp_path):
    store, res = trained
    other = write_store(tmp_path / "o", {s: random_split(8, 1) for s in ("train", "valid", "test")},
                        ["x", "y", "z"])
    with pytest.raises(CheckpointError, match="trained on labels"):
        api.evaluate(res.run_dir, data=other.path)


def test_damaged_checkpoints(trained, tmp_path):
    store, res = trained
    with pytest.raises(CheckpointError, match="belongs to model 'early_fusion', not 'carat'"):
        load_training_state(res.run_dir / "last.ckpt", "carat")
    bad = tmp_path / "last.ckpt"
    bad.write_bytes((res.run_dir / "last.ckpt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_training_state(bad)
    (tmp_path / "last.ckpt.prev").write_bytes((res.run_dir / "last.ckpt").read_bytes())
    with pytest.warns(UserWarning, match="resuming from the previous checkpoint"):
        assert load_training_state(bad)["model_name"] == "early_fusion"
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        Predictor.from_pretrained(tmp_path / "export")


def test_resume_continues_to_identical_result(tmp_path):
    store = toy_store(tmp_path / "store")
    kw = dict(epochs=3, overrides=TINY, batch_size=16, progress=False, deterministic=True)
    [full] = api.train("early_fusion", store.path, out=tmp_path / "a", **kw)
    # simulate a crash after epoch 2: train 2 epochs, then mark the run unfinished and resume to 3
    [part] = api.train("early_fusion", store.path, out=tmp_path / "b", **{**kw, "epochs": 2})
    (part.run_dir / "test_metrics.json").unlink()
    cfg = (part.run_dir / "config.yaml").read_text().replace("epochs: 2", "epochs: 3")
    (part.run_dir / "config.yaml").write_text(cfg)
    [resumed] = api.train("early_fusion", store.path, out=tmp_path / "b", resume=True, **kw)
    assert resumed.run_dir == part.run_dir
    assert resumed.test_metrics["micro_f1"] == pytest.approx(full.test_metrics["micro_f1"], abs=1e-9)
    assert [r["epoch"] for r in resumed.history] == [1, 1, 2, 2, 3, 3]


def test_missing_split_and_data(tmp_path):
    store = write_store(tmp_path / "s", {"train": random_split(8, 1), "test": random_split(8, 2)}, LABELS)
    with pytest.raises(DataError, match="no 'valid' split"):
        api.train("early_fusion", store.path, out=tmp_path / "r", epochs=1, overrides=TINY, progress=False)
    with pytest.raises(DataError, match="does not exist"):
        api.train("early_fusion", tmp_path / "nope", out=tmp_path / "r", epochs=1, progress=False)


def test_tensorboard_logger_writes_every_epoch(tmp_path):
    """train.logger=tensorboard (Fabric's TensorBoardLogger): one scalar per epoch and split for
    each metric, the same values as metrics.csv. (Accumulation, BertAdam: test_optim.py.)"""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = toy_store(tmp_path / "store")
    [res] = api.train("early_fusion", store.path, out=tmp_path / "r", epochs=2, progress=False, batch_size=8,
                      overrides=[*TINY, "optim.optimizer=bertadam", "train.logger=tensorboard"])
    events = EventAccumulator(str(res.run_dir / "tensorboard")).Reload()
    valid = [(e.step, e.value) for e in events.Scalars("valid/micro_f1")]
    want = [(r["epoch"], r["micro_f1"]) for r in res.history if r["split"] == "valid"]
    assert [s for s, _ in valid] == [1, 2]
    np.testing.assert_allclose([v for _, v in valid], [v for _, v in want], rtol=1e-6)
    assert "train/loss/total" in events.Tags()["scalars"]


def test_per_label_threshold_is_searched_on_validation_and_saved(trained, tmp_path):
    import shutil

    from mmerkit.engine import Engine, choose_threshold

    store, res = trained
    run = tmp_path / "run"
    shutil.copytree(res.run_dir, run)  # the fixture's run stays untouched
    out = api.evaluate(run, split="test", threshold="per-label", save_threshold=True)
    cfg, model, _, _ = api.load_run(run)
    valid = Engine(cfg).predict_split(model, store, "valid")
    expected = choose_threshold("per-label", model.threshold, valid.labels, valid.probs)
    saved = json.loads((run / "export" / "config.json").read_text())["threshold"]
    np.testing.assert_allclose(saved, expected)
    assert out["threshold"] == pytest.approx(float(np.mean(expected)))
    pred = Predictor.from_pretrained(run / "export").predict(store.path, split="test")
    np.testing.assert_array_equal(pred.predicted, binarize(pred.probs, np.asarray(expected)))


def test_train_takes_a_config_object_or_dict_and_returns_typed_runs(tmp_path):
    """api.train(config=RunConfig | dict | path): the same resolved config each way; the result
    is a RunResult whose `.run` reads the run directory back."""
    from mmerkit.config import load_config
    from mmerkit.run import Run, RunResult

    store = toy_store(tmp_path / "store")
    as_dict = {"model": {"hidden_size": 16, "layers": 1, "intermediate_size": 32, "num_heads": 2},
               "train": {"epochs": 1, "batch_size": 16, "progress": False}}
    [a] = api.train("early_fusion", store.path, out=tmp_path / "a", config=as_dict)
    cfg = load_config("early_fusion", "toy", None, [])
    # a RunConfig is taken whole, the packaged recipe's step budget included: exact epochs need min_steps 0
    cfg = cfg.model_copy(update={"model": {**cfg.model, **as_dict["model"]},
                                 "train": cfg.train.model_copy(update={**as_dict["train"], "min_steps": 0})})
    [b] = api.train("early_fusion", store.path, out=tmp_path / "b", config=cfg)
    assert isinstance(a, RunResult) and isinstance(a.run, Run) and a.run.finished
    assert a.run.read_config() == b.run.read_config()
    assert a.run.read_config().train.epochs == 1 and a.run.read_config().model["hidden_size"] == 16
    assert a.test_metrics == pytest.approx(b.test_metrics)


def test_fsdp_is_not_offered(tmp_path):
    """Fabric's FSDP needs GPUs and is untested here: refused before anything is written."""
    with pytest.raises(ConfigError, match=r"train.strategy.*'auto' or 'ddp'"):
        api.train("early_fusion", toy_store(tmp_path / "s").path, out=tmp_path / "runs", epochs=1,
                  overrides=TINY, progress=False, strategy="fsdp")
    assert not (tmp_path / "runs").exists()


def test_one_export_class_opens_runs_and_exports(trained, tmp_path):
    """`Export` is the one way in: a run directory and its export/ open the same export; the
    model is built once; thresholds are saved atomically and read back by Predictor; the card's
    run records come through `Run`; a copied export has no run."""
    import shutil

    from mmerkit.export import Export, export_dir_of

    store, res = trained
    a, b = Export(res.run_dir), Export(res.run_dir / "export")
    assert a.path == b.path == export_dir_of(res.run_dir) == res.run_dir / "export"
    assert a.model() is a.model() and a.model().name == "early_fusion" and a.labels == store.labels
    with pytest.raises(CheckpointError, match="belongs to model 'early_fusion'"):
        a.model("carat")
    records = a.run_records()
    assert records["test"]["micro_f1"] == res.test_metrics["micro_f1"] and records["env"]["seed"] == 1
    copy = tmp_path / "copied"
    shutil.copytree(res.run_dir / "export", copy)
    exp = Export(copy)
    assert exp.run is None and exp.run_records() == {"env": {}, "test": None, "valid": None}
    exp.save_threshold([0.1, 0.2, 0.3, 0.4][: len(exp.labels)])
    assert Predictor.from_pretrained(copy).threshold == [0.1, 0.2, 0.3, 0.4][: len(exp.labels)]
    assert api.saved_threshold(copy)["threshold"] == Export(copy).threshold


@pytest.mark.parametrize("batch_size, accumulate, drop_last", [(16, 1, True), (7, 2, False), (500, 1, True)])
def test_steps_per_epoch_are_counted_once(tmp_path, batch_size, accumulate, drop_last):
    """`engine.optimizer_steps` (the scheduler's count, the dry run's plan) is what the training
    loader gives, and the dry run reports it from the same set-up as training."""
    from mmerkit.engine import Engine, optimizer_steps, prepare_training

    store = toy_store(tmp_path / "s")
    kw = dict(overrides=[*TINY, f"optim.accumulate={accumulate}", f"train.drop_last={str(drop_last).lower()}"],
              batch_size=batch_size, progress=False)
    setup = prepare_training(lambda s: api.build_config("early_fusion", s, None, kw["overrides"],
                                                        batch_size=batch_size, progress=False),
                             store, tmp_path / "runs", launch=False)
    assert setup.store is store  # the store object is passed down, not reopened from its path
    loader = Engine(setup.config, setup.fabric).loader(store, "train", train=True)
    expected = max(len(loader) // accumulate, 1)
    assert optimizer_steps(len(store.split("train")), setup.config, 1) == setup.steps_per_epoch == expected
    plan = api.train("early_fusion", store, out=tmp_path / "runs", epochs=2, dry_run=True, **kw)
    assert plan["steps_per_epoch"] == expected and plan["total_steps"] == 2 * expected
    assert not (tmp_path / "runs").exists()


def test_min_steps_lengthens_epochs_on_a_small_split_and_epochs_flag_is_exact(tmp_path):
    """`train.min_steps`: a recipe's epochs are raised to ceil(min_steps / steps per epoch) on a
    small training split, never lowered on a large one; the dry run and the schedule see the
    resolved count; `--epochs N` (api epochs=N) is exactly N epochs."""
    from mmerkit.engine import Engine, prepare_training, step_budget
    from mmerkit.models.base import create_model

    store = toy_store(tmp_path / "s")  # 64 training samples: 4 steps of 16
    sets = [*TINY, *QUIET, "train.epochs=3"]
    plan = api.train("early_fusion", store, out=tmp_path / "runs", overrides=[*sets, "train.min_steps=10"],
                     dry_run=True)
    assert (plan["epochs"], plan["steps_per_epoch"], plan["total_steps"]) == (3, 4, 12)  # 3 x 4 >= 10: as set
    plan = api.train("early_fusion", store, out=tmp_path / "runs", overrides=[*sets, "train.min_steps=30"],
                     dry_run=True)
    assert (plan["epochs"], plan["total_steps"]) == (8, 32)  # ceil(30 / 4)
    recipe_30 = {"train": {"min_steps": 30}}  # a recipe's budget (a preset / YAML), then --epochs 2
    exact = api.train("early_fusion", store, out=tmp_path / "runs", config=recipe_30, overrides=sets, epochs=2,
                      dry_run=True)
    assert exact["epochs"] == 2
    recipe = api.build_config("early_fusion", store, None, [*sets, "train.min_steps=30"])
    setup = prepare_training(lambda s: recipe, store, tmp_path / "runs", launch=False)
    assert setup.config.train.epochs == 8 and step_budget(setup.config, 64, 1) == setup.config
    model = create_model("early_fusion", store.spec(), setup.config.model)
    session = Engine(setup.config, setup.fabric)._session(model, store, None)
    for _ in range(32):  # the linear schedule decays to 0 over the resolved 32 steps, not 12
        session.optimizer.step()
        session.scheduler.step()
    assert session.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)
    assert step_budget(recipe, 6400, 1).train.epochs == 3  # a large split keeps the recipe's epochs
