"""`mmer tune`: hyper-parameter search on Optuna, glued to the one training engine.

Optuna does the search (TPE sampler, median / Hyperband pruners, RDB storage, the heartbeat that
fails a trial whose worker died, enqueue_trial, the matplotlib plots). This module only:

- turns a trial into an ordinary training run (mmerkit.engine.train_seeds) in
  STUDY_DIR/trials/NNNN/, scored by its best-epoch VALIDATION metric; the test split is never read
  (Engine(evaluate_test=False)); each epoch's validation metric goes to the pruner
  (Engine(on_valid=...)); the run directory gets a trial.json with the trial's state;
- enqueues the packaged recipe as the first trial of a new study;
- runs K worker processes on one machine (each with its share of the cores) that take trials from
  a shared budget, so the study ends with exactly N trials however fast each worker is; workers on
  other machines join through the same storage (PostgreSQL) and stop once it holds N trials;
- writes trials.csv, best.yaml (a config `mmer train --config` takes as is) and the plots, and
  retrains the best configuration with --final-seeds, evaluating the test split once per seed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmerkit.config import RunConfig
from mmerkit.errors import ConfigError, MMERError
from mmerkit.metrics import HIGHER_IS_BETTER
from mmerkit.registry import did_you_mean
from mmerkit.space import Param

PRUNERS = ("median", "hyperband", "none")
TRIALS_DIR, BEST_YAML, TRIALS_CSV, STUDY_JSON, FINAL_JSON = "trials", "best.yaml", "trials.csv", "study.json", "final.json"
TRIAL_JSON = "trial.json"
PLOTS = ("optimization_history", "param_importances", "parallel_coordinate")
FINAL_METRICS = ("micro_f1", "macro_f1", "accuracy", "hamming_loss")

# configure(store or None, {"section.key": value}) -> the RunConfig of one trial
Configure = Callable[[Any, dict[str, Any]], RunConfig]


@dataclass
class StudySettings:
    """What names a study and how this command runs it (picklable: workers get a copy)."""

    study_dir: Path
    storage: str  # an SQLAlchemy URL with its driver
    name: str
    model: str
    trials: int
    metric: str
    epochs: int
    pruner: Any = "median"  # median | hyperband | none, or an optuna.pruners.BasePruner (Python API)
    workers: int = 1
    timeout: float | None = None
    seed: int = 0
    heartbeat: int = 10  # seconds between a running trial's heartbeats; stale after twice that

    @property
    def direction(self) -> str:
        return "maximize" if HIGHER_IS_BETTER.get(self.metric, True) else "minimize"


@dataclass
class TuneResult:
    """What `mmer tune` / `api.tune` returns."""

    study_dir: Path
    study_name: str
    storage: str
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    best_config: Path | None  # STUDY_DIR/best.yaml
    trials_csv: Path
    trials: list[dict[str, Any]]
    plots: list[Path] = field(default_factory=list)
    final: list[Any] = field(default_factory=list)  # RunResult per --final-seeds seed
    final_summary: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> mean, std
    seconds: float = 0.0


# ----------------------------------------------------------------------------- storage


def storage_url(storage: str | None, study_dir: Path) -> str:
    """The SQLAlchemy URL: an SQLite file in STUDY_DIR by default; `postgresql://...` as a user
    writes it gets the PostgreSQL driver that is installed (psycopg 3, else psycopg2)."""
    if not storage:
        return f"sqlite:///{(study_dir / 'study.db').resolve()}"
    scheme, sep, rest = storage.partition("://")
    if not sep:
        raise ConfigError(f"--storage {storage!r}: expected a URL such as postgresql://USER:PASS@HOST:5432/DB "
                          "or sqlite:///path/study.db")
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+{_postgres_driver()}://{rest}"
    if scheme.split("+")[0] not in ("postgresql", "sqlite", "mysql"):
        raise ConfigError(f"--storage {storage!r}: unknown database {scheme!r}."
                          f"{did_you_mean(scheme, ['postgresql', 'sqlite', 'mysql'])}")
    return storage


def _postgres_driver() -> str:
    import importlib.util

    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return driver
    raise ConfigError("--storage postgresql://... needs a PostgreSQL driver: pip install 'mmerkit[tune]'")


def open_storage(study: StudySettings):
    import warnings

    import optuna

    # the heartbeat (and fail_stale_trials) are marked experimental; they are what this uses
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    kwargs: dict[str, Any] = {}
    if study.storage.startswith("sqlite"):
        # several worker processes share the file: wait for a lock rather than fail at once
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                study.storage, heartbeat_interval=study.heartbeat, grace_period=2 * study.heartbeat,
                heartbeat_stale_trial_callback=_mark_failed, **kwargs)
        except Exception as e:
            if attempt < 4 and _lost_schema_race(e):
                time.sleep(0.2 * (attempt + 1))
                continue
            # a wrong host, password or database: one line, no traceback
            raise ConfigError(f"--storage: cannot open {_redact(study.storage)}: {str(e).splitlines()[0]}") from None
    raise AssertionError("unreachable")


def _lost_schema_race(e: Exception) -> bool:
    """Processes that open one new database at the same moment (workers, machines, a reader) each
    create its tables and version row; all but one fail on "already exists" / a unique key. The
    schema is then there, so opening again succeeds."""
    text = str(e)
    return type(e).__name__ in ("IntegrityError", "OperationalError", "ProgrammingError") and any(
        s in text for s in ("already exists", "UNIQUE constraint failed", "duplicate key value"))


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest and ":" in rest.split("@", 1)[0]:
        user = rest.split("@", 1)[0].split(":", 1)[0]
        rest = f"{user}:***@{rest.split('@', 1)[1]}"
    return f"{scheme}{sep}{rest}"


# ----------------------------------------------------------------------------- the study


def create_or_join(study: StudySettings, space: list[Param], recipe: dict[str, Any], storage=None):
    """Create the study (its first trial the packaged recipe) or join the existing one, which
    must have been created for the same model, metric, epochs and space."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = storage or open_storage(study)
    s = optuna.create_study(storage=storage, study_name=study.name, direction=study.direction,
                            load_if_exists=True)
    identity = {"model": study.model, "metric": study.metric, "epochs": study.epochs,
                "space": {p.key: p.describe() for p in space}}
    known = s.user_attrs.get("identity")
    if known is None:
        s.set_user_attr("identity", identity)
        if not s.get_trials(deepcopy=False):
            s.enqueue_trial(recipe, user_attrs={"recipe": "packaged"}, skip_if_exists=True)
    elif known != identity:
        diff = next(k for k in identity if identity[k] != known.get(k))
        raise ConfigError(f"study {study.name!r} in {_redact(study.storage)} was created with another {diff} "
                          f"({known.get(diff)!r}, now {identity[diff]!r}); pass the same options to resume it, "
                          "or --study-name NEW / another --out for a new study")
    return s


def counted(s) -> int:
    """Trials that count against the budget: every state but WAITING (an enqueued trial not
    yet started)."""
    from optuna.trial import TrialState

    return sum(t.state != TrialState.WAITING for t in s.get_trials(deepcopy=False))


def make_sampler(study: StudySettings, worker: int):
    import optuna

    # each worker its own stream: the same seed in two workers would draw the same points;
    # constant_liar: a running trial counts as a poor result, so workers spread out
    startup = max(3, min(10, study.trials // 2))
    return optuna.samplers.TPESampler(seed=study.seed * 1000 + worker, n_startup_trials=startup,
                                      constant_liar=True)


def make_pruner(study: StudySettings):
    import optuna

    if isinstance(study.pruner, optuna.pruners.BasePruner):
        return study.pruner
    if study.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(study.epochs // 3, 1))
    if study.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=study.epochs)
    return optuna.pruners.NopPruner()


# ----------------------------------------------------------------------------- one trial


class Objective:
    """One trial: suggest the space, train through the engine, report each epoch, return the
    best validation score. Picklable (workers run it in their own process)."""

    def __init__(self, study: StudySettings, space: list[Param], configure: Configure, data: str | None,
                 on_start: Callable[[Any], None] | None = None):
        self.study, self.space, self.configure, self.data = study, space, configure, data
        self.on_start = on_start

    def __call__(self, trial) -> float:
        import optuna

        from mmerkit.engine import prepare_training, train_seeds

        params = {p.key: p.suggest(trial) for p in self.space}
        trial.set_user_attr("host", os.uname().nodename)
        trial.set_user_attr("pid", os.getpid())
        twin = _earlier_twin(trial, params)
        if twin is not None:  # never train the same point twice: take its value, or prune
            trial.set_user_attr("duplicate_of", twin.number)
            if twin.value is not None:
                return float(twin.value)
            raise optuna.TrialPruned(f"same parameters as trial {twin.number}")
        out = self.study.study_dir / TRIALS_DIR / f"{trial.number:04d}"
        trial.set_user_attr("trial_dir", str(out))
        if self.on_start is not None:
            self.on_start(trial)

        def report(epoch: int, metrics: dict[str, float]) -> None:
            trial.report(float(metrics[self.study.metric]), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        def configure(store):
            return self.configure(store, params)

        started = time.monotonic()
        try:
            [result] = train_seeds(prepare_training(configure, self.data, out), None, on_valid=report,
                                   evaluate_test=False)
        except optuna.TrialPruned as e:
            _write_trial_json(out, trial.number, "pruned", params, None, str(e), time.monotonic() - started)
            raise
        except (MMERError, RuntimeError, ValueError) as e:
            _write_trial_json(out, trial.number, "failed", params, None, str(e).splitlines()[0],
                              time.monotonic() - started)
            raise
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("run_dir", str(result.run_dir))
        _write_trial_json(out, trial.number, "complete", params, result.best_score, "",
                          time.monotonic() - started)
        return float(result.best_score)


def _earlier_twin(trial, params: dict[str, Any]):
    """An earlier trial (running, complete or pruned) with exactly these parameters, or None.
    The later of two twins yields, so two workers never both train one point."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.PRUNED)
    for t in trial.study.get_trials(deepcopy=False, states=states):
        if t.number < trial.number and t.params == params and "duplicate_of" not in t.user_attrs:
            return t
    return None


def _run_dir(trial_dir: Path) -> Path | None:
    runs = sorted(p.parent for p in trial_dir.glob("*/config.yaml"))
    return runs[0] if runs else None


def _write_trial_json(trial_dir: Path, number: int, state: str, params: dict, value: float | None,
                      note: str, seconds: float | None) -> None:
    """The trial's state in its run directory (trial.json), so the directory says what it was."""
    from mmerkit.checkpoint import atomic_write_text

    run = _run_dir(trial_dir)
    if run is None:
        return
    atomic_write_text(run / TRIAL_JSON, json.dumps(
        {"trial": number, "state": state, "value": value, "params": params, "note": note,
         "seconds": None if seconds is None else round(seconds, 2)}, indent=2, default=str))


def _mark_failed(study, trial) -> None:
    """Optuna's heartbeat_stale_trial_callback: a trial whose heartbeat stopped (its worker was killed)
    was just marked FAIL; its run directory says so too."""
    trial_dir = trial.user_attrs.get("trial_dir")
    if trial_dir:
        _write_trial_json(Path(trial_dir), trial.number, "failed", trial.params, None,
                          "its worker stopped (no heartbeat)", None)


# ----------------------------------------------------------------------------- workers


class Budget:
    """Trials left to start on this machine: a shared counter under a lock (K processes)."""

    def __init__(self, left: int, ctx=None):
        import multiprocessing

        ctx = ctx or multiprocessing.get_context("spawn")
        self.left, self.lock = ctx.Value("i", left, lock=False), ctx.Lock()

    def take(self) -> bool:
        with self.lock:
            if self.left.value <= 0:
                return False
            self.left.value -= 1
            return True


def work(study: StudySettings, space: list[Param], configure: Configure, data: str | None, budget: Budget,
         worker: int, deadline: float | None, on_start=None, on_end=None, storage=None, ready=None) -> None:
    """Take trials from the budget until it is spent, the storage holds N trials (other
    machines count too) or the deadline has passed; each trial through study.optimize, so
    Optuna's heartbeat runs and stale trials of dead workers are failed. `storage`: one already
    open in this process (opening checks the schema: a fixed cost of each `mmer tune`). `ready`:
    the start line of this machine's workers (see _wait_for_the_other_workers)."""
    import optuna

    from mmerkit.errors import TrainingDiverged

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.load_study(study_name=study.name, storage=storage or open_storage(study),
                          sampler=make_sampler(study, worker), pruner=make_pruner(study))
    objective = Objective(study, space, configure, data, on_start)
    callbacks = [lambda st, t: on_end(st, t)] if on_end else []
    if ready is not None:
        _wait_for_the_other_workers(ready)
    if worker > 0:
        _let_worker_0_take_the_enqueued_trials(s)
    while deadline is None or time.time() < deadline:
        if counted(s) >= study.trials or not budget.take():
            break
        # a failing trial (diverged, out of memory, refused setting) is recorded FAIL; the study goes on
        s.optimize(objective, n_trials=1, catch=(TrainingDiverged, MMERError, RuntimeError, ValueError),
                   callbacks=callbacks, gc_after_trial=True)


START_TIMEOUT = 120.0  # seconds a worker waits for the others to start (or for worker 0 to pop the enqueued trials)


def _wait_for_the_other_workers(ready) -> None:
    """Spawned workers take seconds to import torch, more on a busy machine, while a small trial
    can take a fraction of one: the first worker up would take the whole budget before the others
    arrive. So every worker opens its storage, then waits here until all have (or until
    START_TIMEOUT, should one fail to start: the rest go on without it)."""
    import threading

    try:
        ready.wait(START_TIMEOUT)
    except threading.BrokenBarrierError:
        pass


def _let_worker_0_take_the_enqueued_trials(s, timeout: float = START_TIMEOUT) -> None:
    """SQLite has no row locks, so two workers asking at once can both pop the same enqueued
    (WAITING) trial, the packaged recipe: it is trained twice and the second tell fails. The
    other workers start once no trial waits (or after `timeout`, should worker 0 be gone); the
    short poll lets them start while worker 0's first trial runs, however short it is."""
    import optuna

    waiting = (optuna.trial.TrialState.WAITING,)
    end = time.time() + timeout
    while s.get_trials(deepcopy=False, states=waiting) and time.time() < end:
        time.sleep(0.02)


def usable_cores() -> int:
    """The CPUs this process may run on: its affinity mask (a SLURM allocation, `taskset`), which
    is what torch's default thread count follows too, not the machine's os.cpu_count()."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """Torch threads of each of `workers` trial processes on this machine: OMP_NUM_THREADS where
    the user set it (per process, as a plain `mmer train` and Fabric's CPU processes take it),
    else the usable cores shared out: 1 worker every core, K workers cores // K each, at least 1.
    More threads than cores make OpenMP threads wait on each other, worst on a busy machine."""
    explicit = os.environ.get("OMP_NUM_THREADS", "").strip()
    if explicit.isdigit() and int(explicit) > 0:
        return int(explicit)
    return max(usable_cores() // max(workers, 1), 1)


class torch_threads:
    """`with torch_threads(n):` torch runs on n intra-op threads inside, the caller's count after."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        import torch

        self.saved = torch.get_num_threads()
        torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc) -> None:
        import torch

        torch.set_num_threads(self.saved)


def _exit_with_parent(parent: int) -> None:
    """Stop this worker once the `mmer tune` process that started it is gone (killed with SIGTERM or
    SIGKILL, which run no clean-up), instead of training on as an orphan that nobody watches; its
    running trial is then failed by Optuna's heartbeat, as a killed worker's is."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="mmer-tune-parent-watch", daemon=True).start()


def _worker_main(study: StudySettings, space: list[Param], configure: Configure, data: str | None,
                 budget: Budget, worker: int, deadline: float | None, threads: int, log: str, parent: int,
                 ready) -> None:
    """A worker process: its share of the cores, its output in STUDY_DIR/logs/worker_K.log."""
    _exit_with_parent(parent)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    import torch

    import mmerkit.engine  # noqa: F401  (imported now, not inside the first trial: its duration is its own)

    torch.set_num_threads(threads)
    try:
        work(study, space, configure, data, budget, worker, deadline, ready=ready)
    except KeyboardInterrupt:
        pass


def run_workers(study: StudySettings, space: list[Param], configure: Configure, data: str | None,
                left: int, show: Progress, storage=None) -> list[int]:
    """K processes (spawned: a forked torch is not safe), `left` trials between them; the
    parent shows progress from the storage. Returns the workers' exit codes."""
    import multiprocessing

    import optuna

    ctx = multiprocessing.get_context("spawn")
    budget = Budget(left, ctx)
    k = min(study.workers, left)
    ready = ctx.Barrier(k)
    threads = threads_per_worker(k)
    deadline = time.time() + study.timeout if study.timeout else None
    logs = study.study_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by the children's torch at import
    try:
        procs = [ctx.Process(target=_worker_main, name=f"mmer-tune-{i}",
                             args=(study, space, configure, data, budget, i, deadline, threads,
                                   str(logs / f"worker_{i}.log"), os.getpid(), ready))
                 for i in range(k)]
        for p in procs:
            p.start()
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    s = optuna.load_study(study_name=study.name, storage=storage or open_storage(study))
    try:
        while any(p.is_alive() for p in procs):
            show(s)
            time.sleep(1.0)
    except KeyboardInterrupt:
        from mmerkit.errors import TrainingInterrupted

        for p in procs:
            p.terminate()
        raise TrainingInterrupted(f"tuning of study {study.name!r} interrupted: the workers were stopped and their "
                                  "running trials are marked failed once their heartbeat is stale") from None
    for p in procs:
        p.join()
    codes = [p.exitcode for p in procs]
    dead = [f"worker {i} (exit code {c}, log {logs / f'worker_{i}.log'})" for i, c in enumerate(codes) if c != 0]
    if dead:
        # a worker died mid-trial: once its heartbeat is stale, Optuna marks the trial FAIL
        show.console.print(f"[yellow]note:[/] {', '.join(dead)} stopped; its trial is marked failed once "
                           f"its heartbeat is {2 * study.heartbeat} s old")
        time.sleep(2 * study.heartbeat + 1)
        optuna.storages.fail_stale_trials(s)
    show(s)
    return codes


# ----------------------------------------------------------------------------- progress


class Progress:
    """One line per trial start and end: trial k of N, its parameters, the best so far."""

    def __init__(self, study: StudySettings, quiet: bool = False):
        from rich.console import Console

        self.study, self.quiet = study, quiet
        self.console = Console(soft_wrap=True, highlight=False)
        self.seen: dict[int, str] = {}

    def __call__(self, s) -> None:
        from optuna.trial import TrialState

        for t in s.get_trials(deepcopy=False):
            state = t.state.name.lower()
            if t.state == TrialState.WAITING or self.seen.get(t.number) == state:
                continue
            if t.state == TrialState.RUNNING and not t.params:
                continue
            self.seen[t.number] = state
            self.line(s, t, state)

    def started(self, trial) -> None:
        self(trial.study)

    def line(self, s, t, state: str) -> None:
        if self.quiet:
            return
        k = f"trial {t.number + 1} of {self.study.trials}"
        params = "  ".join(f"{key}={_short(v)}" for key, v in t.params.items())
        if state == "running":
            self.console.print(f"[bold]{k}[/] started  {params}")
            return
        value = f"{self.study.metric} {t.value:.4f}" if t.value is not None else ""
        best = _best(s)
        best_text = f"  best {best.value:.4f} (trial {best.number + 1})" if best is not None else ""
        note = f" (same parameters as trial {t.user_attrs['duplicate_of'] + 1})" if "duplicate_of" in t.user_attrs else ""
        colour = {"complete": "green", "pruned": "yellow", "fail": "red"}.get(state, "white")
        self.console.print(f"[bold]{k}[/] [{colour}]{state}[/]{note}  {value}{best_text}")


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _best(s):
    try:
        return s.best_trial
    except ValueError:  # no complete trial yet
        return None


# ----------------------------------------------------------------------------- results


def trials_table(s) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, duration, the run directory, the parameters."""
    rows = []
    for t in s.get_trials(deepcopy=False):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        trial_dir = t.user_attrs.get("trial_dir")
        run = t.user_attrs.get("run_dir") or (str(_run_dir(Path(trial_dir)) or "") if trial_dir else "")
        rows.append({"number": t.number, "state": t.state.name.lower(), "value": t.value,
                     "best_epoch": t.user_attrs.get("best_epoch"),
                     "duration_s": None if seconds is None else round(seconds, 2),
                     "run_dir": run, "note": _trial_note(t),
                     **{f"params.{k}": v for k, v in t.params.items()}})
    return rows


def _trial_note(t) -> str:
    if t.user_attrs.get("recipe"):
        return "packaged recipe"
    if "duplicate_of" in t.user_attrs:
        return f"same parameters as trial {t.user_attrs['duplicate_of']}"
    return ""


def write_trials_csv(rows: list[dict[str, Any]], path: Path) -> None:
    from mmerkit.checkpoint import atomic_write_text

    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows({k: "" if row.get(k) is None else row.get(k) for k in keys} for row in rows)
    atomic_write_text(path, buf.getvalue())


def write_best(s, study_dir: Path) -> Path | None:
    """STUDY_DIR/best.yaml: the best trial's resolved config (its run's config.yaml)."""
    from mmerkit.checkpoint import atomic_write_text

    best = _best(s)
    if best is None:
        return None
    twin = best.user_attrs.get("duplicate_of")
    source = best if twin is None else s.trials[twin]
    run = source.user_attrs.get("run_dir")
    if not run or not (Path(run) / "config.yaml").exists():
        return None
    header = (f"# mmer tune: best trial {best.number} of study {s.study_name!r}, validation value "
              f"{best.value:.6g}\n# retrain: mmer train --config {study_dir / BEST_YAML}\n")
    path = study_dir / BEST_YAML
    atomic_write_text(path, header + (Path(run) / "config.yaml").read_text())
    return path


def write_plots(s, study_dir: Path) -> list[Path]:
    """Optimisation history, parameter importances, parallel coordinates (Optuna's matplotlib
    plots); a plot Optuna cannot draw yet (e.g. importances of one complete trial) is left out."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    out = study_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    complete = [t for t in s.get_trials(deepcopy=False) if t.value is not None]
    for name in PLOTS:
        if name != "optimization_history" and len(complete) < 2:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks these plots experimental
                ax = getattr(vis, f"plot_{name}")(s)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(9, 5.5)
            fig.tight_layout()
            fig.savefig(out / f"{name}.png", dpi=110)
            plt.close(fig)
            written.append(out / f"{name}.png")
        except (ValueError, RuntimeError, ZeroDivisionError):
            plt.close("all")
    return written


def summarise(results: list[Any]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation over the final seeds of each reported test metric."""
    out = {}
    for key in FINAL_METRICS:
        values = [float(r.test_metrics[key]) for r in results if key in r.test_metrics]
        if values:
            out[key] = {"mean": statistics.fmean(values),
                        "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def read_study_dir(study_dir: Path) -> dict[str, Any]:
    """study.json of a tuned STUDY_DIR (what --show and --final-seeds read)."""
    path = Path(study_dir) / STUDY_JSON
    if not path.is_file():
        raise ConfigError(f"{study_dir} is not a study directory (no {STUDY_JSON}); pass the --out of `mmer tune`")
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------- the whole command


def run_study(study: StudySettings, space: list[Param], recipe: dict[str, Any], configure: Configure,
              data: str | None, quiet: bool = False) -> Any:
    """Create or join the study, run this machine's share of the N trials (1 worker in this
    process, K in worker processes), then write trials.csv, best.yaml, the plots, study.json."""
    import optuna

    study.study_dir.mkdir(parents=True, exist_ok=True)
    storage = open_storage(study)
    s = create_or_join(study, space, recipe, storage)
    optuna.storages.fail_stale_trials(s)  # a killed earlier run's trial, once its heartbeat is stale
    left = study.trials - counted(s)
    progress = Progress(study, quiet)
    if left <= 0:
        progress.console.print(f"study {study.name!r} already holds {counted(s)} trials (--trials {study.trials}): "
                               "nothing to run; raise --trials to add more")
    elif study.workers == 1:  # in this process, on every core (as a plain `mmer train` runs), whatever the caller set
        deadline = time.time() + study.timeout if study.timeout else None
        with torch_threads(threads_per_worker(1)):
            work(study, space, configure, data, Budget(left), 0, deadline,
                 on_start=progress.started, on_end=lambda st, t: progress(st), storage=storage)
    else:
        run_workers(study, space, configure, data, left, progress, storage)
    return s


def write_results(s, study: StudySettings, space: list[Param], seconds: float) -> TuneResult:
    from mmerkit.checkpoint import atomic_write_text

    rows = trials_table(s)
    write_trials_csv(rows, study.study_dir / TRIALS_CSV)
    best = _best(s)
    best_yaml = write_best(s, study.study_dir)
    plots = write_plots(s, study.study_dir)
    info = {"study_name": study.name, "storage": _redact(study.storage), "model": study.model,
            "metric": study.metric, "direction": study.direction, "epochs": study.epochs,
            "trials": study.trials, "space": [p.describe() for p in space],
            "best_trial": None if best is None else best.number,
            "best_value": None if best is None else best.value,
            "best_params": {} if best is None else best.params}
    atomic_write_text(study.study_dir / STUDY_JSON, json.dumps(info, indent=2, default=str))
    return TuneResult(study.study_dir, study.name, _redact(study.storage),
                      None if best is None else float(best.value), {} if best is None else dict(best.params),
                      None if best is None else best.number, best_yaml, study.study_dir / TRIALS_CSV, rows,
                      plots, seconds=seconds)


def final_runs(study_dir: Path, best_params: dict[str, Any], configure: Configure, data: str | None,
               seeds: list[int]) -> tuple[list[Any], dict[str, dict[str, float]]]:
    """The best configuration retrained once per seed into STUDY_DIR/final/, each evaluated on
    the test split once (the engine's ordinary run); mean and std in STUDY_DIR/final.json."""
    from mmerkit.checkpoint import atomic_write_text
    from mmerkit.engine import prepare_training, train_seeds

    results = train_seeds(prepare_training(lambda store: configure(store, best_params), data, study_dir / "final"),
                          seeds)
    summary = summarise(results)
    atomic_write_text(study_dir / FINAL_JSON, json.dumps(
        {"seeds": seeds, "params": best_params, "test": summary,
         "runs": [str(r.run_dir) for r in results],
         "per_seed": [{"seed": r.test_metrics.get("seed"), **{k: r.test_metrics.get(k) for k in FINAL_METRICS}}
                      for r in results]}, indent=2, default=str))
    return results, summary
