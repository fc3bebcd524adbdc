"""Extraction speed: seconds of media processed per second of wall time (x real time).

Makes a test video (H.264 at WIDTHxHEIGHT, 25 fps, the scikit-image astronaut photograph
scaled to the frame's height and drifting across it so the face tracker has work to do, AAC speech from espeak-ng when it
is installed, else a tone), cuts it into utterances, and times, in one process:

- decode: PyAV, audio at 16 kHz plus frames at --fps (5);
- text: MiniLM on a given transcript (no speech recognition);
- audio: the librosa features (100 Hz);
- visual: MediaPipe FaceLandmarker blendshapes at --fps;
- asr: Whisper tiny.en (int8) with word timestamps;
- total = decode + text + audio + visual; total+asr adds speech recognition.

Each modality's figure counts the decoding it needs (audio decode for audio and asr, video
decode for visual: full decode minus audio-only decode). Model loading and the first call
(lazy imports) are excluded, since a worker pays them once, but reported.

    python benchmarks/extract.py                        # 12 utterances of 5 s, 1280x720
    python benchmarks/extract.py --clips 4 --seconds 3 --threads 2 --out runs/bench_extract.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

TRANSCRIPT = ("I am really happy to see you today, this is wonderful news, and I did not "
              "expect it at all")


def speech_wave(seconds: float, sr: int = 16000) -> np.ndarray:
    """espeak-ng speech repeated to `seconds` (a tone with noise when espeak-ng is missing)."""
    from mmerkit.extract.decode import decode

    n = int(seconds * sr)
    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as d:
            wav = Path(d) / "s.wav"
            subprocess.run(["espeak-ng", "-s", "150", "-w", str(wav), TRANSCRIPT], check=True)
            one = decode(wav).audio
        return np.resize(one, n)
    t = np.arange(n) / sr
    rng = np.random.default_rng(0)
    return (0.2 * np.sin(2 * np.pi * 180 * t) + 0.02 * rng.standard_normal(n)).astype(np.float32)


def write_video(path: Path, seconds: float, width: int, height: int, sr: int = 16000) -> None:
    """H.264 + AAC test video: the astronaut drifting on a grey background, speech audio."""
    import av
    from skimage import data
    from skimage.transform import resize

    from mmerkit.extract.demo import mux_audio

    # a talking-head framing: the face about a sixth of the frame's width (the short-range
    # face detector misses faces much smaller than that, see docs/extract.md)
    face = (resize(data.astronaut(), (height, height), anti_aliasing=True) * 255).astype(np.uint8)
    fps = 25
    audio = (speech_wave(seconds, sr) * 32767).astype(np.int16)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.time_base = Fraction(1, fps)
        vs.gop_size = 2 * fps  # a keyframe every 2 s, as streaming sites encode; a cut seeks
        # to the keyframe before it, so longer GOPs cost more decoding per utterance
        as_ = out.add_stream("aac", rate=sr)
        as_.layout = "mono"
        canvas = np.full((height, width, 3), 110, np.uint8)
        fh, fw = min(face.shape[0], height), min(face.shape[1], width)
        for i in range(int(seconds * fps)):
            frame = canvas.copy()
            x = int((width - fw) * (0.5 + 0.4 * np.sin(i / 40)))  # drift sideways
            y = int((height - fh) * (0.5 + 0.3 * np.cos(i / 55)))
            frame[y : y + fh, x : x + fw] = face[:fh, :fw]
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            out.mux(vs.encode(vf))
        out.mux(vs.encode())
        mux_audio(out, as_, audio, sr)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def _spans(spent: dict[str, float]) -> dict[str, float]:
    """Seconds per modality, each with the decoding it needs, and the totals."""
    video_share = max(spent["decode_full"] - spent["decode_audio"], 0.0)
    spans = {
        "decode": spent["decode_full"],
        "text": spent["text"],
        "audio": spent["decode_audio"] + spent["audio"],
        "visual": video_share + spent["visual"],
        "asr": spent["decode_audio"] + spent["asr"],
        "total": sum(spent[k] for k in ("decode_full", "text", "audio", "visual")),
    }
    spans["total+asr"] = spans["total"] + spent["asr"]
    return spans


def run(args: argparse.Namespace) -> dict:
    import torch

    from mmerkit.extract.base import create_extractor
    from mmerkit.extract.decode import decode

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    video = work / "talk.mp4"
    write_video(video, args.clips * args.seconds, args.width, args.height)

    load = {}
    extractors = {}
    for key, name, params in [("text", "minilm", {}), ("audio", "librosa", {}),
                              ("visual", "mediapipe", {"fps": args.fps}),
                              ("asr", "whisper", {"cpu_threads": args.threads})]:
        extractors[key], load[key] = timed(create_extractor, name, **params)
    warm = decode(video, start=0.0, end=1.0, fps=args.fps)  # first calls pay lazy imports
    warm.transcript = TRANSCRIPT
    for key, ex in extractors.items():
        _, t = timed(ex.transcribe if key == "asr" else ex.extract, warm)
        load[key] += t

    parts = ["decode_audio", "decode_full", "text", "audio", "visual", "asr"]
    wall = dict.fromkeys(parts, 0.0)
    cpu = dict.fromkeys(parts, 0.0)  # process CPU time: all threads, immune to other load

    def clock(part, fn, *fn_args, **fn_kwargs):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        result = fn(*fn_args, **fn_kwargs)
        wall[part] += time.perf_counter() - start_wall
        cpu[part] += time.process_time() - start_cpu
        return result

    faces = words = 0
    for k in range(args.clips):
        cut = {"start": k * args.seconds, "end": (k + 1) * args.seconds}
        clip = clock("decode_audio", decode, video, fps=args.fps, with_video=False, **cut)
        clip.frames = clock("decode_full", decode, video, fps=args.fps, **cut).frames
        clip.transcript = TRANSCRIPT
        clock("text", extractors["text"].extract, clip)
        clock("audio", extractors["audio"].extract, clip)
        visual = clock("visual", extractors["visual"].extract, clip)
        faces += int(visual.mask.sum()) if visual.mask is not None else 0
        words += len(clock("asr", extractors["asr"].transcribe, clip)[1])

    media = args.clips * args.seconds
    spans = {"wall": _spans(wall), "cpu": _spans(cpu)}
    shutil.rmtree(work, ignore_errors=True)
    return {
        "media_seconds": media,
        "x_real_time": {k: round(media / v, 2) for k, v in spans["wall"].items()},
        "x_real_time_per_cpu_second": {k: round(media / v, 2) for k, v in spans["cpu"].items()},
        "wall_seconds": {k: round(v, 3) for k, v in spans["wall"].items()},
        "model_load_seconds": {k: round(v, 2) for k, v in load.items()},
        "frames_with_face": f"{faces}/{int(round(media * args.fps))}",
        "recognised_words": words,
        "setup": {"clips": args.clips, "seconds": args.seconds, "size": f"{args.width}x{args.height}",
                  "fps": args.fps, "threads": args.threads, "cpus": os.cpu_count(),
                  "load_average": [round(x, 2) for x in os.getloadavg()],
                  "machine": platform.processor() or platform.machine()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=12, help="utterances (default 12)")
    p.add_argument("--seconds", type=float, default=5.0, help="seconds per utterance (5)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=float, default=5.0, help="visual frames per second (5)")
    p.add_argument("--threads", type=int, default=2, help="torch / CTranslate2 threads (2)")
    p.add_argument("--out", type=Path, help="write the figures as JSON here too")
    args = p.parse_args()
    result = run(args)
    print(json.dumps(result, indent=2))
    print("\n| part | x real time (wall) | wall s | x real time per CPU second |")
    print("|---|---|---|---|")
    for key, speed in result["x_real_time"].items():
        per_cpu = result["x_real_time_per_cpu_second"][key]
        print(f"| {key} | {speed} | {result['wall_seconds'][key]} | {per_cpu} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
