"""The supervised contrastive term alone: ours (losses.supcon_loss) against the releases' dense
N x N formulation (losses.supcon_loss_dense), forward + backward, runs interleaved so both see
the same machine load. Defaults: LDDU's pool at batch 64 (18 x 64 rows of 256 dims + 8,192).

    python benchmarks/supcon_loss.py                          # LDDU, batch 64
    python benchmarks/supcon_loss.py --rows 3456 --dim 64     # CARAT, batch 64
"""

from __future__ import annotations

import argparse
import math
import statistics
import time


def main() -> None:
    import torch
    import torch.nn.functional as F

    from mmerkit.models.losses import supcon_loss, supcon_loss_dense

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=18 * 64, help="batch rows (get gradients)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queue", type=int, default=8192)
    p.add_argument("--classes", type=int, default=36)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = F.normalize(torch.randn(args.rows, args.dim), dim=1).requires_grad_()
    ids = torch.randint(0, args.classes, (args.rows,))
    queue = F.normalize(torch.randn(args.queue, args.dim), dim=0) / math.sqrt(2)
    queue_ids = torch.randint(0, args.classes, (args.queue,))
    times: dict[str, list[float]] = {"ours": [], "dense": []}
    for _ in range(args.repeats):
        for name, fn in (("ours", supcon_loss), ("dense", supcon_loss_dense)):
            start = time.perf_counter()
            fn(rows, ids, queue, queue_ids).backward()
            times[name].append(time.perf_counter() - start)
            rows.grad = None
    for name, ts in times.items():
        print(f"{name}: median {statistics.median(ts):.2f} s per forward + backward ({', '.join(f'{t:.2f}' for t in ts)})")
    print(f"dense / ours: {statistics.median(times['dense']) / statistics.median(times['ours']):.2f}x")


if __name__ == "__main__":
    main()
