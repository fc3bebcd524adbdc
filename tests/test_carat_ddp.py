"""Two CPU processes (gloo) train CARAT on different data; the queue, its labels, the pointer
and the prototypes must stay identical on both ranks because updates go through `gather`."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _gather(t: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_carat import make_batch, make_spec, small

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        spec = make_spec()
        model = small(spec, moco_queue=200)  # same seed: same initial weights on both ranks
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        torch.manual_seed(100 + rank)  # different dropout and shuffles per rank
        for step in range(3):
            batch = make_batch(spec, b=6, seed=10 * step + rank)  # different data per rank
            model.train()
            out = model(batch)
            loss = model.loss(out, batch)["total"]
            opt.zero_grad()
            loss.backward()
            for p in model.parameters():  # what DDP would do: average the gradients
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= WORLD
            opt.step()
            model.on_train_batch_end(out, batch, _gather)
        state = {k: model.state_dict()[k].clone() for k in
                 ("queue", "queue_labels", "queue_ptr", "pos_protos", "neg_protos")}
        torch.save(state, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_state_identical_across_ranks(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD))
    rows_per_step = WORLD * 6 * 3 * 3 * 4
    assert int(a["queue_ptr"]) == (3 * rows_per_step) % 200
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert a["pos_protos"].abs().sum() > 0 and (a["queue_labels"] >= 0).all()
