"""Speed of emotions over time, and of `mmer extract` on short clips, as a user runs them.

1. `mmer extract` on a folder of short utterance clips (`python -m mmerkit.extract.demo`: 24
   clips of 2 s, face, tone, transcripts given), with --workers 2, timed from the command's
   start to its end (interpreter start-up, model loading and worker start-up included): seconds
   of media per wall second.
2. A model is trained on that store (late fusion, a few epochs: only its speed matters here).
3. A generated recording of --minutes (10) minutes, the scikit-image astronaut drifting across a
   640x360 frame at 25 fps and espeak-ng speech with pauses (mpeg4 + AAC), goes through
   `mmer predict EXPORT --media long.mp4 --window 4 --hop 2 --out timeline.csv` with speech
   recognition (Whisper tiny.en, 2 threads) on: seconds of media per wall second, model
   loading included, and the command's peak resident memory.

Both commands run as subprocesses, so their times and memory are those of a user's shell.
The machine's load (`os.getloadavg()`) before and after each is recorded: on a shared machine
the numbers move with it.

    python benchmarks/timeline.py --out benchmarks/results/timeline.json
    python benchmarks/timeline.py --minutes 2          # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PHRASES = ["what a lovely day it is today", "I am so happy for you", "this is unacceptable",
           "I miss her so much", "nothing is going right", "stop doing that right now",
           "this is wonderful news", "I feel so alone"]


def long_recording(path: Path, minutes: float) -> Path:
    """The astronaut drifting on grey at 640x360 / 25 fps, speech with one-second pauses."""
    from skimage.data import astronaut

    from mmerkit.extract.demo import spoken, write_recording

    seconds = minutes * 60
    face = astronaut()[:300, 100:400]  # 300x300, the face in the middle
    canvas = np.full((360, 640, 3), 128, np.uint8)

    def picture(t: float) -> np.ndarray:
        x = int(170 + 150 * np.sin(2 * np.pi * t / 20))  # drifts: the tracker has work to do
        frame = canvas.copy()
        frame[30:330, x:x + 300] = face
        return frame

    pieces = []
    for text in PHRASES:
        wave = spoken(text)
        if wave is None:
            raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng): the recording needs speech")
        pieces += [wave, np.zeros(16000, np.int16)]
    speech = np.concatenate(pieces)
    wave = np.resize(speech, int(seconds * 16000))
    return write_recording(path, seconds, picture=picture, wave=wave, fps=25)


# a fresh wrapper process per command: its RUSAGE_CHILDREN peak is that command's (and its workers')
PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)")


def timed(cmd: list[str]) -> dict:
    """Run a command; its wall time, peak resident memory and the machine's load around it."""
    before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK, *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    peak_kb = int(proc.stderr.strip().splitlines()[-1])
    return {"command": " ".join(cmd[2:] if cmd[1:3] == ["-m", "mmerkit"] else cmd), "wall_s": round(wall, 2),
            "peak_rss_mb": round(peak_kb / 1024, 1), "load_before": round(before, 2),
            "load_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the long recording")
    ap.add_argument("--workers", type=int, default=2, help="mmer extract --workers")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = ap.parse_args()
    mmer = [sys.executable, "-m", "mmerkit"]
    env_note = {"python": platform.python_version(), "cpus": os.cpu_count(), "uname": platform.platform()}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        from mmerkit.extract.demo import make_demo

        manifest = make_demo(work / "clips")
        clip_seconds = 2.0 * 24
        extract = timed([*mmer, "extract", str(manifest), "--out", str(work / "store"),
                         "--workers", str(args.workers), "--overwrite"])
        extract["media_s"] = clip_seconds
        extract["x_real_time"] = round(clip_seconds / extract["wall_s"], 2)
        print(f"mmer extract, 24 clips of 2 s, {args.workers} workers: {extract['x_real_time']}x real time "
              f"({extract['wall_s']} s; load {extract['load_before']} -> {extract['load_after']})", flush=True)

        subprocess.run([*mmer, "train", "-m", "late_fusion", "-d", str(work / "store"), "--out", str(work / "runs"),
                        "--epochs", "3"], check=True, capture_output=True)
        export = next((work / "runs").glob("late_fusion_*/export"))

        t0 = time.perf_counter()
        recording = long_recording(work / "long.mp4", args.minutes)
        made = round(time.perf_counter() - t0, 1)
        timeline = timed([*mmer, "predict", str(export), "--media", str(recording), "--window", "4", "--hop", "2",
                          "--out", str(work / "timeline.csv")])
        media_s = args.minutes * 60
        timeline.update(media_s=media_s, x_real_time=round(media_s / timeline["wall_s"], 2),
                        recording_written_s=made, windows=sum(1 for _ in open(work / "timeline.csv")) - 1)
        print(f"timeline, {args.minutes:g} min, window 4 hop 2, ASR on: {timeline['x_real_time']}x real time "
              f"({timeline['wall_s']} s), peak memory {timeline['peak_rss_mb']} MB; load "
              f"{timeline['load_before']} -> {timeline['load_after']}", flush=True)
    result = {"extract_short_clips": extract, "timeline": timeline, "machine": env_note,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
