"""`mmer train --dry-run`: validate everything a training run needs and say what it would do.

The data (the store is opened, so shapes, lengths, labels and NaN/inf are checked), the
configuration (every layer validated), the devices (counted, not launched) and the memory
estimate (mmerkit.memory, which refuses a step that will not fit) are checked exactly as
`mmer train` checks them; then the plan is returned instead of training: model and parameter
count, data sizes, steps, devices, and the run directories it would write. Nothing is written
(the embedded dataset is generated into the cache if it is not there yet, as `mmer train` would).

Example:
    >>> plan = api.train("carat", "store", config="carat-small", dry_run=True)   # doctest: +SKIP
    >>> plan["steps_per_epoch"], plan["runs"]                                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmerkit.engine import TrainingSetup


def training_plan(setup: TrainingSetup, seeds: Sequence[int] | None, resume: bool = False) -> dict[str, Any]:
    """Everything `engine.train_seeds` checks before training, on the same set-up
    (`engine.prepare_training(..., launch=False)`), then the plan as a JSON-able dict."""
    from mmerkit.memory import check_training_memory, gb
    from mmerkit.models.base import create_model
    from mmerkit.run import new_run_dir, resumable_run_dir

    fabric, store, cfg, out = setup.fabric, setup.store, setup.config, setup.out
    model = create_model(cfg.model_name, store.spec(), cfg.model)
    est = check_training_memory(model, store, cfg)
    t = cfg.train
    world = fabric.world_size
    steps = setup.steps_per_epoch
    seeds = list(seeds or [t.seed])
    runs = [str(resumable_run_dir(out, cfg.model_name, store, s) if resume
                else new_run_dir(out, cfg.model_name, store, s)[0]) for s in seeds]
    return {
        "model": cfg.model_name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "store": str(store.path), "labels": store.labels, "modalities": store.modalities,
        "splits": store.splits, "longest": store.spec().max_len,
        "epochs": t.epochs, "batch_size": t.batch_size, "steps_per_epoch": 0 if model.closed_form else steps,
        "total_steps": 0 if model.closed_form else steps * t.epochs,
        "devices": world, "accelerator": str(fabric.device), "precision": t.precision, "strategy": t.strategy,
        "memory": est.describe() if est is not None else "not estimated (closed-form model or memory_check=off)",
        "memory_available": gb(est.available) + f" of {est.where}" if est is not None and est.available else None,
        "seeds": seeds, "runs": runs, "resume": resume,
    }


def format_plan(plan: dict[str, Any]) -> list[str]:
    """The plan as the lines `mmer train --dry-run` prints."""
    splits = ", ".join(f"{k} {v}" for k, v in plan["splits"].items())
    mods = ", ".join(f"{m} {d}-d × ≤{plan['longest'].get(m, '?')} steps" for m, d in plan["modalities"].items())
    mem = plan["memory"] + (f" (this machine: {plan['memory_available']})" if plan.get("memory_available") else "")
    return [
        f"model     {plan['model']} ({plan['parameters']:,} parameters)",
        f"data      {plan['store']}: {splits}; {len(plan['labels'])} labels; {mods}",
        f"training  {plan['epochs']} epochs × {plan['steps_per_epoch']} steps (batch {plan['batch_size']}), "
        f"{plan['total_steps']} steps",
        f"devices   {plan['devices']} × {plan['accelerator']}, precision {plan['precision']}, "
        f"strategy {plan['strategy']}",
        f"memory    {mem}",
        *(f"{'resume' if plan['resume'] else 'writes'}    {r}" for r in plan["runs"]),
        "dry run: data, config, devices and memory checked; nothing trained or written",
    ]
