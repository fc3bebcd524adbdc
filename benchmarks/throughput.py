"""Training / evaluation throughput and peak memory of registered models at the CMU-MOSEI shape.

Each model runs in a fresh subprocess so peak resident memory (ru_maxrss) does not mix.

    python benchmarks/throughput.py --model carat --threads 2
    python benchmarks/throughput.py --model carat --set model.anchors=batch --precision bf16-mixed
    python benchmarks/throughput.py --model carat --extractors-only   # transformer-only ceiling
    python benchmarks/throughput.py --model carat --supcon dense      # the authors' N x N SupCon
    python benchmarks/throughput.py --model lddu --supcon dense       # LDDU's release: N = 18B + 8192
    python benchmarks/throughput.py --json results.json               # every registered model

Train step = forward + loss + backward + AdamW step + on_train_batch_end, on random tensors
(batch 64, T = 50, text 300 / visual 35 / audio 74, 6 labels), timed after warm-up steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time

SHAPE = {"text": 300, "visual": 35, "audio": 74}
LABELS = ("happy", "sad", "anger", "surprise", "disgust", "fear")


def make_batch(batch_size: int, seq_len: int, seed: int = 0):
    import torch

    from mmerkit.data.batch import Batch

    g = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(batch_size, seq_len, d, generator=g) for m, d in SHAPE.items()}
    masks = {m: torch.ones(batch_size, seq_len, dtype=torch.bool) for m in SHAPE}
    labels = (torch.rand(batch_size, len(LABELS), generator=g) < 0.27).float()
    labels[labels.sum(1) == 0, 0] = 1.0
    return Batch(inputs, masks, torch.ones(batch_size, len(SHAPE), dtype=torch.bool), labels,
                 torch.arange(batch_size), tuple(SHAPE))


def model_params(overrides: list[str]) -> dict:
    from mmerkit.config import deep_merge, parse_override

    merged: dict = {}
    for item in overrides:
        merged = deep_merge(merged, parse_override(item))
    unknown = [k for k in merged if k != "model"]
    if unknown:
        raise SystemExit(f"--set: only model.* keys are supported here, got {unknown}")
    return merged.get("model", {})


class ExtractorsOnly:
    """The transformer-only ceiling: CARAT's input norms + extractors + a mean-pool BCE head."""

    def __init__(self, model):
        import torch

        self.model = model
        self.head = torch.nn.Linear(model.config.hidden_size * len(SHAPE), len(LABELS)).to(
            next(model.parameters()).device)

    def parameters(self):
        return [*self.model.norms.parameters(), *self.model.extractors.parameters(),
                *self.head.parameters()]

    def train_step(self, batch):
        import torch

        hs = [self.model.extractors[m](self.model.norms[m](batch.inputs[m]), batch.masks[m]).mean(1)
              for m in batch.modalities]
        logits = self.head(torch.cat(hs, -1))
        return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch.labels)


def run_one(args) -> dict:
    """Measure one model in this process; returns the result row."""
    import torch

    from mmerkit.data.store import DataSpec
    from mmerkit.models.base import create_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.supcon == "dense":  # the authors' N x N formulation, to measure what chunking saves
        import mmerkit.models.carat as carat
        import mmerkit.models.lddu as lddu
        from mmerkit.models.losses import supcon_loss_dense

        carat.supcon_loss = lddu.supcon_loss = supcon_loss_dense
    spec = DataSpec(LABELS, dict(SHAPE), True, {m: args.seq_len for m in SHAPE})
    device = torch.device(args.device)
    model = create_model(args.model, spec, model_params(args.set)).to(device)
    batch = make_batch(args.batch_size, args.seq_len).to(device)
    def gather(t):
        return t
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16-mixed"
           else contextlib.nullcontext())
    ext = ExtractorsOnly(model) if args.extractors_only else None
    params = ext.parameters() if ext else [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)

    def train_step():
        model.train()
        with amp:
            if ext:
                loss = ext.train_step(batch)
            else:
                out = model(batch)
                loss = model.loss(out, batch)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if not ext:
            model.on_train_batch_end(out, batch, gather)

    def eval_step():
        model.eval()
        with torch.no_grad(), amp:
            if ext:
                for m in batch.modalities:
                    model.extractors[m](model.norms[m](batch.inputs[m]), batch.masks[m])
            else:
                model(batch)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(fn, steps, warmup):
        for _ in range(warmup):
            fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        return args.batch_size * steps / (time.perf_counter() - t0)

    train = timed(train_step, args.steps, args.warmup)
    rss_train = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    evals = timed(eval_step, args.steps, 1)
    name = args.model + (" (extractors only)" if ext else "") + (" (dense SupCon)" if args.supcon == "dense" else "")
    return {"model": name, "train_samples_per_s": round(train, 2),
            "eval_samples_per_s": round(evals, 2),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            "peak_rss_after_train_gib": round(rss_train, 3), "precision": args.precision,
            "threads": args.threads, "batch_size": args.batch_size, "seq_len": args.seq_len,
            "steps": args.steps, "overrides": list(args.set), "device": args.device,
            "peak_device_gib": (round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
                                if device.type == "cuda" else None),
            "parameters": sum(p.numel() for p in params)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="registered model name (default: all)")
    p.add_argument("--set", action="append", default=[], metavar="model.KEY=VALUE")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=50)
    p.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    p.add_argument("--threads", type=int, default=max(1, min(os.cpu_count() or 1, 2)))
    p.add_argument("--extractors-only", action="store_true",
                   help="time only the per-modality transformer extractors (CARAT-style models)")
    p.add_argument("--supcon", choices=["chunked", "dense"], default="chunked",
                   help="CARAT's / LDDU's contrastive loss: ours, or the releases' dense N x N masks")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (peak GPU memory is reported)")
    p.add_argument("--json", default=None, help="write the result rows to this file")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child_argv(args, model: str) -> list[str]:
    argv = [sys.executable, os.path.abspath(__file__), "--_child", "--model", model,
            "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
            "--precision", args.precision, "--threads", str(args.threads), "--supcon", args.supcon,
            "--device", args.device]
    for s in args.set:
        argv += ["--set", s]
    return argv + (["--extractors-only"] if args.extractors_only else [])


def main(argv=None) -> None:
    args = parse_args(argv)
    if args._child:
        print(json.dumps(run_one(args)))
        return
    if args.model:
        models = [args.model]
    else:
        from mmerkit.models.base import list_models, model_class

        # closed-form models (classic BR / CC / LP) take no gradient steps: nothing to time here
        models = [n for n in list_models() if not model_class(n).closed_form]
    rows = []
    for name in models:
        proc = subprocess.run(child_argv(args, name), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    show(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


def show(rows: list[dict]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover
        for r in rows:
            print(r)
        return
    table = Table(title="throughput (samples/s) and peak RSS")
    for col in ("model", "precision", "threads", "train/s", "eval/s", "peak RSS GiB", "overrides"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["model"], r["precision"], str(r["threads"]),
                      f"{r['train_samples_per_s']:.1f}",
                      f"{r['eval_samples_per_s']:.1f}", f"{r['peak_rss_gib']:.2f}",
                      " ".join(r["overrides"]))
    Console().print(table)


if __name__ == "__main__":
    main()
