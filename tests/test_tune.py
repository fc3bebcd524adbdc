"""`mmer tune`: search spaces, the objective, SQLite and PostgreSQL studies with workers, resume,
pruning, a SIGKILLed worker (docs/tune.md)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import QUIET, TINY, mmer_fails, run_cli, toy_store

from mmerkit import api
from mmerkit.errors import ConfigError
from mmerkit.models.base import list_models, model_class
from mmerkit.space import default_space, resolve_space, values_of

optuna = pytest.importorskip("optuna", reason="mmer tune needs optuna: pip install 'mmerkit[tune]'")

SRC = str(Path(__file__).resolve().parents[1] / "src")
# the toy store's width and no progress bars; batch size and width stay fixed (not searched)
FIXED = [*TINY, *QUIET]
# 2 x 2 points: with more trials than points some must repeat, so the no-twins rule is exercised
SMALL_SPACE = {"optim.lr": {"type": "categorical", "choices": [1e-3, 3e-3]},
               "model.dropout": {"type": "categorical", "choices": [0.0, 0.1]},
               "optim.weight_decay": None, "train.batch_size": None, "model.hidden_size": None,
               "model.layers": None}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def _load(study_dir: Path, name: str = "early_fusion"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{(study_dir / 'study.db').resolve()}")


def _toy_width_space_file(tmp_path: Path) -> Path:
    """A --space file that keeps the toy store's batch size and width fixed (FIXED sets them):
    the search varies the optimiser and dropout only."""
    path = tmp_path / "space.yaml"
    path.write_text("train.batch_size: null\nmodel.hidden_size: null\nmodel.layers: null\n")
    return path


def _at_worker_start(tmp_path: Path, monkeypatch, code: str) -> Path:
    """Run `code` in each spawned worker process before anything else (a sitecustomize.py on the
    workers' PYTHONPATH; `os`, `sys`, `time` and `here`, its folder, are at hand). Returns the folder."""
    here = tmp_path / "site"
    here.mkdir()
    (here / "sitecustomize.py").write_text("import os, sys, time\nhere = os.path.dirname(__file__)\n"
                                           "if '--multiprocessing-fork' in sys.argv:  # a spawned worker\n"
                                           + textwrap.indent(code, "    "))
    monkeypatch.setenv("PYTHONPATH", str(here) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return here


# ----------------------------------------------------------------------------- spaces


@pytest.mark.parametrize("model", list_models())
def test_every_registered_model_has_a_valid_default_space(model):
    """A new model gets the generic space (or declares one); it must pass the same checks as a
    user's space against the model's packaged recipe, which is trial 0."""
    base = api.build_config(model, None, None, [])
    params = resolve_space(base)
    assert params, f"{model} has an empty default space"
    recipe = values_of(params, base)
    assert set(recipe) == {p.key for p in params}
    if not model_class(model).closed_form:
        assert "optim.lr" in default_space(model)


def test_space_declared_by_the_model_and_user_override():
    carat = default_space("carat")
    assert {"model.cl_weight", "model.recon_mse_weight", "model.aug_mse_weight"} <= set(carat)
    assert default_space("tailor")["model.decoder_init"]["choices"] == ["bert", "xavier"]
    base = api.build_config("carat", None, None, [])
    params = resolve_space(base, {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True},
                                  "model.cl_weight": None})
    keys = {p.key: p for p in params}
    assert "model.cl_weight" not in keys and keys["optim.lr"].low == 1e-4


@pytest.mark.parametrize("space, message", [
    ({"model.dropuot": {"type": "float", "low": 0, "high": 0.5}}, "Did you mean 'dropout'?"),
    ({"optim.lrr": {"type": "float", "low": 1e-5, "high": 1e-3}}, "Did you mean 'lr'?"),
    ({"optm.lr": {"type": "float", "low": 1e-5, "high": 1e-3}}, "Did you mean 'optim'?"),
    ({"optim.lr": {"type": "float", "lo": 1e-5, "high": 1e-3}}, "unknown range field 'lo'. Did you mean 'low'?"),
    ({"optim.lr": {"type": "flaot", "low": 1e-5, "high": 1e-3}}, "Did you mean 'float'?"),
    ({"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-5}}, "empty range"),
    ({"model.layers": {"type": "int", "low": 2, "high": 2}}, "empty range"),
    ({"optim.lr": {"type": "float", "low": 0.0, "high": 1e-3, "log": True}}, "log: true needs low > 0"),
    ({"optim.lr": {"type": "float", "low": -1.0, "high": 1e-3}}, "refused by the config"),
    ({"optim.optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]}}, "'sgd' is refused"),
    ({"train.batch_size": {"type": "categorical", "choices": []}}, "non-empty list"),
    ({"model.layers": {"type": "int", "low": 1, "high": 3.5}}, "not a whole number"),
])
def test_bad_space_is_one_line_naming_the_key(space, message):
    base = api.build_config("early_fusion", None, None, [])
    with pytest.raises(ConfigError) as e:
        resolve_space(base, space, "space.yaml")
    text = str(e.value)
    assert message in text and "\n" not in text
    assert f"space.yaml: {next(iter(space))}" in text or "space.yaml: key" in text or "space.yaml: unknown" in text


def test_bad_space_file_and_options_exit_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "space.yaml"
    bad.write_text("model.dropuot: {type: float, low: 0.0, high: 0.5}\n")
    for args, message in ((["--space", str(bad)], "Did you mean 'dropout'?"),
                          (["--pruner", "medain"], "Did you mean 'median'?"),
                          (["--metric", "micro_f2"], "Did you mean 'micro_f1'?"),
                          (["--set", "optim.lr=1e-3"], "fixes a key the search space varies")):
        assert message in mmer_fails(capsys, "tune", "-m", "early_fusion", "--out", str(tmp_path / "s"), *args)
    assert not (tmp_path / "s").exists()  # nothing half-written


def test_storage_url_picks_the_installed_driver():
    from mmerkit.tune import _redact, storage_url

    url = storage_url("postgresql://me:secret@db.example:5432/studies", Path("x"))
    assert url.startswith(("postgresql+psycopg://", "postgresql+psycopg2://"))
    assert _redact(url).endswith("me:***@db.example:5432/studies")
    assert storage_url(None, Path("s")).endswith("/s/study.db")
    with pytest.raises(ConfigError, match="Did you mean 'postgresql'"):
        storage_url("postgresq://u@h/db", Path("x"))


# ----------------------------------------------------------------------------- studies


@pytest.mark.slow
def test_sqlite_two_workers_resume_and_best_yaml(tmp_path):
    """2 workers share 5 trials of a 4-point space: 5 trials in total, trial 0 the packaged recipe,
    no two trained trials with the same parameters, no test metrics in the trials; running again
    with --trials 6 adds one; best.yaml is a config `mmer train` takes."""
    store = toy_store(tmp_path / "store").path
    kw = dict(config=None, space=SMALL_SPACE, epochs=2, out=tmp_path / "study", overrides=FIXED,
              workers=2, pruner="none", heartbeat=2, quiet=True)
    res = api.tune("early_fusion", store, trials=5, **kw)
    study = _load(tmp_path / "study")
    trials = study.get_trials()
    # a twin of a still-running trial is pruned (not trained); every other trial completes
    assert len(trials) == 5 and all(t.state.name == "COMPLETE" or "duplicate_of" in t.user_attrs for t in trials)
    base = api.build_config("early_fusion", None, None, FIXED)
    assert trials[0].params == values_of(resolve_space(base, SMALL_SPACE), base)
    assert trials[0].user_attrs.get("recipe") == "packaged"
    trained = [t for t in trials if "duplicate_of" not in t.user_attrs]
    points = [tuple(sorted(t.params.items())) for t in trained]
    assert len(points) == len(set(points)) and len(trained) <= 4
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # both workers ran trials
    from mmerkit.tune import threads_per_worker

    assert set(_trial_threads(tmp_path / "study")) == {threads_per_worker(2)}  # each its share of the cores
    for t in trained:
        run = Path(t.user_attrs["run_dir"])
        assert run.parent.parent == tmp_path / "study" / "trials"
        assert json.loads((run / "trial.json").read_text())["state"] == "complete"
        assert (run / "valid_metrics.json").exists() and not (run / "test_metrics.json").exists()
    # scored by the best epoch's validation metric, as metrics.csv records it
    best_run = Path(study.best_trial.user_attrs.get("run_dir") or trials[study.best_trial.user_attrs["duplicate_of"]].user_attrs["run_dir"])
    from mmerkit.run import read_history

    history = [r for r in read_history(best_run / "metrics.csv") if r["split"] == "valid"]
    assert study.best_value == pytest.approx(max(r["micro_f1"] for r in history))
    assert res.best_value == pytest.approx(study.best_value)
    rows = (tmp_path / "study" / "trials.csv").read_text().splitlines()
    assert rows[0].startswith("number,state,value") and len(rows) == 6
    assert {p.name for p in res.plots} >= {"optimization_history.png"}
    cfg = api.build_config(None, None, tmp_path / "study" / "best.yaml", [])
    assert cfg.model_name == "early_fusion" and cfg.train.epochs == 2
    assert cfg.optim.lr == res.best_params["optim.lr"]

    api.tune("early_fusion", store, trials=6, **kw)  # resume: up to 6 in total
    assert len(_load(tmp_path / "study").get_trials()) == 6


def test_tuning_never_reads_the_test_split_and_final_seeds_read_it_once_each(tmp_path, monkeypatch):
    """Every split the engine loads is recorded: the trials load train and valid only; each
    --final-seeds run evaluates the test split once, and final.json holds mean and std."""
    from mmerkit.engine import Engine

    loaded: list[str] = []
    real_loader = Engine.loader

    def recording_loader(self, store, split, train, seed=0):
        loaded.append(split)
        return real_loader(self, store, split, train, seed)

    monkeypatch.setattr(Engine, "loader", recording_loader)
    store = toy_store(tmp_path / "store").path
    res = api.tune("early_fusion", store, trials=2, space=SMALL_SPACE, epochs=1, out=tmp_path / "study",
                   overrides=FIXED, pruner="none", quiet=True, final_seeds=[])
    assert "test" not in loaded and {"train", "valid"} <= set(loaded)
    assert res.final == [] and not (tmp_path / "study" / "final.json").exists()
    loaded.clear()
    res = api.tune("early_fusion", store, trials=2, space=SMALL_SPACE, epochs=1, out=tmp_path / "study",
                   overrides=FIXED, pruner="none", quiet=True, final_seeds=[1, 2])
    assert loaded.count("test") == 2  # the study was complete: only the two final runs trained
    final = json.loads((tmp_path / "study" / "final.json").read_text())
    assert final["seeds"] == [1, 2] and set(final["test"]["micro_f1"]) == {"mean", "std"}
    assert [r.test_metrics["seed"] for r in res.final] == [1, 2]
    assert res.final_summary["micro_f1"]["mean"] == pytest.approx(
        sum(r.test_metrics["micro_f1"] for r in res.final) / 2)


def _trial_threads(study_dir: Path) -> list[int]:
    """The torch threads each trained trial ran on (its run's env.json)."""
    return [json.loads(p.read_text())["torch_threads"] for p in sorted((study_dir / "trials").glob("*/*/env.json"))]


def test_one_worker_trains_on_every_core_and_gives_the_caller_its_threads_back(tmp_path, monkeypatch):
    """A 1-worker study runs its trials in the calling process on every usable core, as a plain
    `mmer train` does (not on whatever the caller's torch was set to: 1 thread here, by conftest),
    and the caller has its own count back afterwards; OMP_NUM_THREADS, where set, is the count."""
    import torch

    from mmerkit.tune import usable_cores

    store = toy_store(tmp_path / "store").path
    kw = dict(trials=1, space=SMALL_SPACE, epochs=1, overrides=FIXED, pruner="none", quiet=True)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert torch.get_num_threads() == 1
    api.tune("early_fusion", store, out=tmp_path / "every_core", **kw)
    assert _trial_threads(tmp_path / "every_core") == [usable_cores()]
    assert torch.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(usable_cores())
    api.tune("early_fusion", store, out=tmp_path / "omp_1", **kw)
    assert _trial_threads(tmp_path / "omp_1") == [1]
    assert torch.get_num_threads() == usable_cores()


def test_pruner_counts_the_epochs_the_step_budget_gives_a_small_split(tmp_path):
    """Without an epoch count, a recipe's train.min_steps lengthens a small split's run (engine.
    step_budget); the study's epoch count (the pruner's warm-up and Hyperband's resource) is that
    resolved length, not the recipe's nominal epochs: 1 epoch, 12 steps = 3 epochs of 4 steps."""
    from mmerkit.run import read_history

    store = toy_store(tmp_path / "store").path  # 64 training samples: 4 steps of 16
    recipe = {"train": {"epochs": 1, "min_steps": 12}}
    api.tune("early_fusion", store, trials=1, config=recipe, space=SMALL_SPACE, out=tmp_path / "study",
             overrides=FIXED, pruner="none", quiet=True)
    assert json.loads((tmp_path / "study" / "study.json").read_text())["epochs"] == 3
    run = next((tmp_path / "study" / "trials" / "0000").iterdir())
    assert {r["epoch"] for r in read_history(run / "metrics.csv")} == {1, 2, 3}


@pytest.mark.slow
def test_pruned_trial_is_recorded_and_its_run_says_so(tmp_path):
    """A pruner that prunes every trial at its first report: the trial stops after epoch 1 of 3,
    is PRUNED in the study and in trials.csv, and its run directory's trial.json says so."""
    store = toy_store(tmp_path / "store").path
    res = api.tune("early_fusion", store, trials=1, space=SMALL_SPACE, epochs=3, out=tmp_path / "study",
                   overrides=FIXED, pruner=optuna.pruners.ThresholdPruner(lower=1.1), quiet=True)
    [t] = _load(tmp_path / "study").get_trials()
    assert t.state.name == "PRUNED" and res.best_trial is None
    run = next((tmp_path / "study" / "trials" / "0000").iterdir())
    assert json.loads((run / "trial.json").read_text())["state"] == "pruned"
    from mmerkit.run import read_history

    assert {r["epoch"] for r in read_history(run / "metrics.csv")} == {1}  # stopped after epoch 1
    assert res.trials[0]["state"] == "pruned"


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an orphan's exit may wait for a reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc (Linux)")
def test_workers_stop_when_the_tune_process_is_killed(tmp_path):
    """`mmer tune --workers 2` SIGKILLed (no clean-up runs): its two workers, each mid-trial, stop
    within seconds instead of training on as orphans."""
    store = toy_store(tmp_path / "store").path
    out = tmp_path / "study"
    space = _toy_width_space_file(tmp_path)
    cmd = [sys.executable, "-m", "mmerkit", "tune", "-m", "early_fusion", "-d", str(store), "--trials", "4",
           "--epochs", "200", "--space", str(space), "--out", str(out), "--workers", "2", "--pruner", "none",
           *[a for s in FIXED for a in ("--set", s)]]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    workers: list[int] = []
    deadline = time.time() + 240
    while len(workers) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        try:
            running = _load(out).get_trials(states=(optuna.trial.TrialState.RUNNING,))
        except Exception:  # the study is not created yet
            continue
        workers = [t.user_attrs["pid"] for t in running if "pid" in t.user_attrs]
    assert len(workers) == 2 and all(_alive(pid) for pid in workers)
    proc.kill()
    proc.wait()
    deadline = time.time() + 15
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:  # do not leave them running if the check fails
        os.kill(pid, signal.SIGKILL)
    assert not left, "workers outlived the killed mmer tune process"


@pytest.mark.slow
def test_sigkilled_worker_fails_its_trial_and_the_study_goes_on(tmp_path):
    """`mmer tune --workers 2`: one worker is SIGKILLed mid-trial; its trial becomes FAIL
    (Optuna's heartbeat), its run directory says failed, the other worker runs the rest: 4
    trials in total, 3 complete."""
    store = toy_store(tmp_path / "store").path
    space = _toy_width_space_file(tmp_path)
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "mmerkit", "tune", "-m", "early_fusion", "-d", str(store), "--trials", "4",
           "--epochs", "40", "--space", str(space), "--out", str(out), "--workers", "2", "--pruner", "none",
           "--heartbeat", "1", *[a for s in FIXED for a in ("--set", s)]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    victim = None
    deadline = time.time() + 240
    while victim is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if not (out / "study.db").exists():
            continue
        try:
            running = _load(out).get_trials(states=(optuna.trial.TrialState.RUNNING,))
        except Exception:  # the study is being created
            continue
        for t in running:
            trial_dir = t.user_attrs.get("trial_dir")
            if "pid" in t.user_attrs and trial_dir and list(Path(trial_dir).glob("*/metrics.csv")):
                victim = t
                os.kill(t.user_attrs["pid"], signal.SIGKILL)
                break
    output, _ = proc.communicate(timeout=600)
    assert victim is not None, output
    assert proc.returncode == 0, output
    trials = _load(out).get_trials()
    states = {t.number: t.state.name for t in trials}
    assert len(trials) == 4 and states[victim.number] == "FAIL", (states, output)
    assert sum(s == "COMPLETE" for s in states.values()) == 3
    run = next(Path(victim.user_attrs["trial_dir"]).iterdir())
    assert json.loads((run / "trial.json").read_text())["state"] == "failed"
    assert "stopped" in output  # the parent says a worker died


@pytest.mark.slow
def test_a_worker_slow_to_start_still_gets_its_share(tmp_path, monkeypatch):
    """A spawned worker imports torch before its first trial (seconds on a busy machine) and a toy
    trial takes a fraction of one: without a start line the first worker up took every trial (a CI
    run saw one pid in a 2-worker study). Here worker 1 is held 5 s when it opens its log (before
    it imports torch); worker 0 must wait for it, so both train."""
    hold = _at_worker_start(tmp_path, monkeypatch, "def hold_worker_1(event, args):\n"
                                                   "    if event == 'open' and str(args[0]).endswith('worker_1.log'):\n"
                                                   "        os.close(os.open(os.path.join(here, 'taken'), os.O_CREAT))\n"
                                                   "        time.sleep(5)\n"
                                                   "sys.addaudithook(hold_worker_1)\n")
    store = toy_store(tmp_path / "store").path
    api.tune("early_fusion", store, trials=3, config=None, space=_toy_width_space_file(tmp_path), epochs=2,
             out=tmp_path / "study", overrides=FIXED, workers=2, pruner="none", quiet=True)
    assert (hold / "taken").exists()  # one worker was held
    trials = _load(tmp_path / "study").get_trials()
    assert len(trials) == 3 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs["pid"] for t in trials}) == 2


def test_a_study_where_no_trial_completes_exits_1(tmp_path, monkeypatch, capsys):
    """Every worker dies before its first trial (here each spawned process exits at start-up): the
    command says so on stderr and exits 1, so a script or a cluster job does not read it as a study
    with a result (it exited 0 with a note)."""
    _at_worker_start(tmp_path, monkeypatch, "os._exit(3)\n")
    store = toy_store(tmp_path / "store").path
    space = _toy_width_space_file(tmp_path)
    code, out, err = run_cli(capsys, "tune", "-m", "early_fusion", "-d", str(store), "--trials", "2", "--epochs", "1",
                             "--space", str(space), "--out", str(tmp_path / "study"), "--workers", "2",
                             "--heartbeat", "1", *[a for s in FIXED for a in ("--set", s)])
    assert code == 1, out + err
    assert "worker 0 (exit code 3" in out  # the parent names the dead workers
    error = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "no trial of study 'early_fusion' completed" in error[0], err
    assert str(tmp_path / "study" / "logs") in error[0] and "Traceback" not in err


@pytest.mark.slow
def test_postgresql_study_with_two_workers_on_a_real_server(tmp_path):
    """A throw-away PostgreSQL cluster (pg_virtualenv, from Debian's postgresql-common; `make
    test` installs it as root): `mmer tune --storage postgresql://...` with 2 worker processes,
    then the study read back from the server before the cluster is dropped."""
    if shutil.which("pg_virtualenv") is None:
        pytest.skip("pg_virtualenv not found: install Debian's postgresql and postgresql-common "
                    "(`make tune-deps` as root) to run the PostgreSQL study test")
    store = toy_store(tmp_path / "store").path
    os.chmod(tmp_path, 0o755)  # the cluster runs as the postgres user when we are root
    space = _toy_width_space_file(tmp_path)
    url = "postgresql://$PGUSER:$PGPASSWORD@$PGHOST:$PGPORT/$PGDATABASE"
    sets = " ".join(f"--set '{s}'" for s in FIXED)
    check = ("import json, optuna, sys; from mmerkit.tune import storage_url; "
             "s = optuna.load_study(study_name='early_fusion', storage=storage_url(sys.argv[1], None)); "
             "print('STUDY', json.dumps([[t.state.name, t.params, t.user_attrs.get('pid')] for t in s.trials]))")
    script = (f"set -e; {sys.executable} -m mmerkit tune -m early_fusion -d {store} --trials 3 --epochs 2 "
              f"--space {space} --out {tmp_path / 'study'} --workers 2 --pruner none {sets} --storage \"{url}\"; "
              f"{sys.executable} -c \"{check}\" \"{url}\"")
    r = subprocess.run(["pg_virtualenv", "sh", "-c", script], capture_output=True, text=True, env=_env(),
                       timeout=600, cwd=tmp_path)
    if r.returncode != 0 and "initdb" in r.stderr and "root" in r.stderr:
        pytest.skip(f"pg_virtualenv could not start a cluster here: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("STUDY "))
    trials = json.loads(line[len("STUDY "):])
    assert len(trials) == 3 and all(state == "COMPLETE" for state, _, _ in trials)
    assert len({pid for _, _, pid in trials}) == 2  # two worker processes shared the study
    assert not (tmp_path / "study" / "study.db").exists()  # the server held it, not SQLite
    assert "***" in json.loads((tmp_path / "study" / "study.json").read_text())["storage"]


def _open_at(args) -> str:
    from mmerkit.tune import StudySettings, open_storage

    url, start = args
    while time.time() < start:  # every process opens the new file at the same moment
        time.sleep(0.001)
    settings = StudySettings(study_dir=Path(url[len("sqlite:///"):]).parent, storage=url, name="s",
                             model="early_fusion", trials=1, metric="micro_f1", epochs=1)
    open_storage(settings)
    return "ok"


def test_processes_opening_one_new_study_at_once_all_succeed(tmp_path):
    """Workers, machines and a reader that open a new database together race on its schema (the
    loser's "UNIQUE constraint failed: alembic_version"); the loser opens it again instead of failing."""
    import multiprocessing

    url = f"sqlite:///{tmp_path / 'study.db'}"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        start = time.time() + 3  # after the pool's processes have started
        assert pool.map(_open_at, [(url, start)] * 4) == ["ok"] * 4
