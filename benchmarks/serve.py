"""Throughput and latency of `mmer serve`, with and without server-side batching.

Starts `mmer serve` in its own process on 127.0.0.1 and drives it from this process with a
bounded number of concurrent clients for a bounded time, for feature requests (JSON, one
MOSEI-shaped sample each) and for media requests (a short mp4 with a transcript, through the
export's real extractors). Prints requests/s, p50/p99 latency and the server's mean batch size.

    python benchmarks/serve.py                           # trains small models first (a few minutes)
    python benchmarks/serve.py --export runs/x/export --media-export runs/clips/export
    python benchmarks/serve.py --clients 16 --seconds 20 --out benchmarks/results/serve.json

Nothing leaves this machine: the server binds 127.0.0.1 and every request goes there.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- models to serve


def feature_export(work: Path, model: str, config: str | None) -> Path:
    """A model trained 1 epoch on the embedded MOSEI-shaped data (text 300, visual 35, audio 74, T = 50)."""
    from mmerkit import api

    store = api.data_synth(work / "synth", samples=600, overwrite=True)
    [run] = api.train(model, store.path, out=work / "runs", epochs=1, config=config,
                      overrides=["train.progress=false"])
    return run.run_dir / "export"


def media_export(work: Path) -> Path:
    """A small model trained on clips through `mmer extract` (MiniLM text, librosa audio,
    MediaPipe visual; transcripts given), so the server extracts new clips the same way."""
    from mmerkit import api

    clips, rows = work / "clips", []
    clips.mkdir(parents=True, exist_ok=True)
    words = ["great", "awful", "fine", "happy", "sad", "angry"]
    for i in range(18):
        test_clip(clips / f"c{i}.mp4", 1.0 + (i % 3) * 0.5, freq=200 + 40 * i)
        rows.append({"id": f"c{i}", "media": f"c{i}.mp4", "transcript": f"I feel {words[i % 6]} today",
                     "labels": ["joy", "anger", "joy;anger"][i % 3]})
    with open(clips / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    res = api.extract(clips / "manifest.csv", work / "clip_store", asr="off", overwrite=True)
    [run] = api.train("early_fusion", res.store.path, out=work / "clip_runs", epochs=1,
                      overrides=["model.hidden_size=32", "model.layers=1", "model.intermediate_size=64", "model.num_heads=2",
                                 "train.progress=false"])
    return run.run_dir / "export"


def test_clip(path: Path, seconds: float, freq: float) -> Path:
    """A clip with a face (scikit-image's astronaut photograph) and a tone (tests/serve_helpers.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from serve_helpers import write_clip
    from skimage.data import astronaut

    return write_clip(path, seconds, image=astronaut()[:256, 128:384], tone=freq)


# ----------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(export: Path, port: int, batching: bool, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mmerkit.cli", "serve", str(export), "--host", "127.0.0.1", "--port", str(port),
           "--threads", "1", *([] if batching else ["--no-batching"]), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start in 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


# ----------------------------------------------------------------------------- load


async def drive(url: str, make_request, clients: int, seconds: float) -> dict:
    """`clients` loops, each sending one request after the other, for `seconds`."""
    import httpx

    latencies: list[float] = []
    errors = 0

    async def client_loop(client):
        nonlocal errors
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            r = await client.post("/v1/predict", **make_request())
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=clients)) as client:
        for _ in range(3):  # warm-up: the first media request starts the extraction worker
            await client.post("/v1/predict", **make_request())
        stats0 = (await client.get("/v1/stats")).json()
        started = time.monotonic()
        stop = started + seconds
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        elapsed = time.monotonic() - started
        stats1 = (await client.get("/v1/stats")).json()
    calls = stats1["model_calls"] - stats0["model_calls"]
    lat = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": errors, "seconds": round(elapsed, 2),
            "rps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
            "mean_batch": round((stats1["samples"] - stats0["samples"]) / calls, 2) if calls else None}


def feature_request(export: Path, steps: int):
    meta = json.loads((export / "config.json").read_text())
    rng = np.random.default_rng(0)
    body = json.dumps({"samples": [{m: rng.normal(size=(steps, d)).round(4).tolist()
                                    for m, d in meta["spec"]["modalities"].items()}]}).encode()
    return lambda: {"content": body, "headers": {"Content-Type": "application/json"}}


def media_request(work: Path):
    clip = test_clip(work / "request.mp4", 2.0, freq=330).read_bytes()
    return lambda: {"files": {"file": ("request.mp4", clip)}, "data": {"transcript": "I really love this, it is great"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, help="export for feature requests (default: train carat-small)")
    ap.add_argument("--media-export", type=Path, help="export trained on `mmer extract` data (default: make one)")
    ap.add_argument("--model", default="carat", help="model trained when --export is not given")
    ap.add_argument("--config", default="carat-small",
                    help="its preset ('none': the model's defaults, CARAT at the paper's width)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients")
    ap.add_argument("--seconds", type=float, default=15.0, help="measured time per configuration")
    ap.add_argument("--steps", type=int, default=50, help="time steps per modality in a feature request")
    ap.add_argument("--skip-media", action="store_true", help="feature requests only")
    ap.add_argument("--out", type=Path, help="also write the results as JSON")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="mmerkit-bench-serve-"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    cases = [("features", args.export or feature_export(work, args.model, None if args.config == "none" else args.config), feature_request, [])]
    if not args.skip_media:
        export = args.media_export or media_export(work)
        # --max-uploads 32: every client's clip may wait for the worker, as when the rows were measured
        cases.append(("media", export, lambda _e, _s: media_request(work), ["--workers", "1", "--max-uploads", "32"]))
    rows = []
    for kind, export, make, extra in cases:
        for batching in (True, False):
            port = free_port()
            proc = start_server(export, port, batching, extra)
            try:
                res = asyncio.run(drive(f"http://127.0.0.1:{port}", make(export, args.steps), args.clients, args.seconds))
            finally:
                stop_server(proc)
            rows.append({"requests_of": kind, "batching": batching, "clients": args.clients, **res})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| requests | batching | clients | req/s | p50 ms | p99 ms | mean batch | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['requests_of']} | {'on' if r['batching'] else 'off'} | {r['clients']} | {r['rps']} | "
              f"{r['p50_ms']} | {r['p99_ms']} | {r['mean_batch']} | {r['errors']} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "cpus": os.cpu_count(), "steps": args.steps}, indent=2))


if __name__ == "__main__":
    main()
