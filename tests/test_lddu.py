"""LDDU against the release's values (specs/univa_lddu.md Part C, D1-D8, computed with the
release's own functions): the contrastive term over [mu; sigma] with its queue, the calibration
term, fusion and both BCEs, the warmup_cosine schedule, metrics, shapes, the queue pointer, the
parameter count at the authors' sizes; and the fast contrastive loss against the release's dense
formula in value and gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import EASY_DATA, assert_beats_every_constant

from mmerkit.config import load_config
from mmerkit.data.batch import Batch
from mmerkit.data.store import DataSpec
from mmerkit.metrics import compute_metrics
from mmerkit.models.base import create_model
from mmerkit.models.lddu import LDDU, calibration_loss, contrastive_ids, contrastive_rows, fuse
from mmerkit.models.losses import ring_enqueue, supcon_loss
from mmerkit.optim import build_optimizer, lr_lambda

Tensor = torch.Tensor

MOSEI = ("happy", "sad", "anger", "surprise", "disgust", "fear")
AUTHORS_SPEC = DataSpec(MOSEI, {"text": 768, "visual": 35, "audio": 74}, True,
                        {"text": 50, "visual": 50, "audio": 50})
TINY_SPEC = DataSpec(MOSEI, {"text": 6, "visual": 4, "audio": 5}, True, {"text": 8, "visual": 8, "audio": 8})


def release_supcon(feats: Tensor, ids: Tensor, tau: float = 0.07) -> Tensor:
    """The release's SupConLoss as the spec writes it (B3), with N x N matrices: S = F F^T / 2 /
    tau minus the detached row max, self pairs out, mean over every anchor."""
    n = feats.shape[0]
    s = feats @ feats.T / 2 / tau
    s = s - s.max(1, keepdim=True).values.detach()
    keep = 1 - torch.eye(n, dtype=feats.dtype)
    pos = (ids[:, None] == ids[None, :]).to(feats.dtype) * keep
    logp = s - torch.log((keep * s.exp()).sum(1, keepdim=True) + 1e-12)
    return (-(pos * logp).sum(1) / (pos.sum(1) + 1e-12)).mean()


def make_batch(b=4, t=8, seed=0, spec=TINY_SPEC) -> Batch:
    g = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(b, t, d, generator=g) for m, d in spec.modalities.items()}
    masks = {m: torch.ones(b, t, dtype=torch.bool) for m in spec.modalities}
    y = (torch.rand(b, spec.num_labels, generator=g) < 0.4).float()
    return Batch(inputs, masks, torch.ones(b, len(spec.modalities), dtype=torch.bool), y,
                 torch.arange(b), spec.modality_names)


def test_d1_supcon_value():
    a = torch.tensor([[1, 0], [.6, .8], [0, 1], [.8, .6]])
    b = torch.tensor([[.6, .8], [1, 0], [.8, .6], [0, 1]])
    feats, ids = torch.cat([a, b], 1), torch.tensor([0, 0, 1, 1])
    # the release's rows have norm sqrt(2) and logits / 2 / tau: ours are the rows / sqrt(2)
    assert float(supcon_loss(feats / math.sqrt(2), ids)) == pytest.approx(2.922720, abs=1e-5)
    assert float(release_supcon(feats, ids)) == pytest.approx(2.922720, abs=1e-5)
    sim = feats @ feats.T / 2
    off = ~torch.eye(4, dtype=torch.bool)
    pos = (ids[:, None] == ids[None, :]) & off
    assert float(sim[pos].mean()) == pytest.approx(0.6, abs=1e-5)
    assert float(sim[off].mean()) == pytest.approx(0.626667, abs=1e-5)


def test_d2_contrastive_ids():
    y = torch.tensor([[1.0, 0, 0, 0, 0, 1]])
    assert contrastive_ids(y, 3)[0].tolist() == [[0, 7, 8, 9, 10, 5], [12, 19, 20, 21, 22, 17],
                                                 [24, 31, 32, 33, 34, 29]]


def d3_inputs():
    ar = torch.arange(12, dtype=torch.float32)
    mu = torch.stack([torch.sin(ar + m).reshape(1, 6, 2) for m in range(3)], 1)  # (1, M, L, k)
    sigma = torch.stack([(0.5 + torch.sigmoid(torch.cos(ar * (m + 1)))).reshape(1, 6, 2) for m in range(3)], 1)
    y = torch.tensor([[1.0, 0, 0, 0, 0, 1]])
    queue = F.normalize(torch.sin(0.7 * torch.arange(80, dtype=torch.float32)).reshape(20, 4), dim=0)
    queue_ids = (7 * torch.arange(20)) % 36
    return mu, sigma, y, queue, queue_ids


def test_d3_full_contrastive_term_with_queue_and_pointer():
    mu, sigma, y, queue, queue_ids = d3_inputs()
    rows, ids = contrastive_rows(mu, sigma), contrastive_ids(y, 3).reshape(-1)
    # the queue holds rows at the same 1/sqrt(2) scale as ours
    loss = supcon_loss(rows, ids, queue / math.sqrt(2), queue_ids)
    assert float(loss) == pytest.approx(4.598966, abs=1e-5)
    q, ql, ptr = queue.clone(), queue_ids.clone(), torch.zeros((), dtype=torch.long)
    ring_enqueue(q, ql, ptr, rows, ids)
    assert int(ptr) == 18 and torch.equal(ql[:18], ids) and torch.equal(ql[18:], queue_ids[18:])


def test_d3_through_the_model_loss():
    """The model's own `loss` path (rows, ids, queue buffers) gives D3's value."""
    mu, sigma, y, queue, queue_ids = d3_inputs()
    spec = DataSpec(MOSEI, {"visual": 3, "audio": 3, "text": 3}, True, {"visual": 4, "audio": 4, "text": 4})
    model = create_model("lddu", spec, {**LDDU.test_params, "latent_size": 2, "moco_queue": 20,
                                        "final_weight": 0, "cml_weight": 0, "crl_weight": 0},
                         preset="lddu-authors")
    model.queue.copy_(queue / math.sqrt(2))
    model.queue_labels.copy_(queue_ids)
    from mmerkit.models.base import ModelOutput

    out = ModelOutput(logits=torch.zeros(1, 6), probs=torch.full((1, 6), 0.5),
                      aux={"mu": mu, "sigma": sigma, "present": torch.ones(1, 3, dtype=torch.bool)})
    batch = Batch({}, {}, torch.ones(1, 3, dtype=torch.bool), y, torch.arange(1), spec.modality_names)
    assert float(model.loss(out, batch)["cdl"]) == pytest.approx(4.598966, abs=1e-5)
    model.on_train_batch_end(out, batch, lambda t: t)
    assert int(model.queue_ptr) == 18


def test_fast_contrastive_equals_the_dense_formula_in_value_and_gradient():
    """At a queue of 64 and 3 samples (N = 118): ours against the release's N x N matrices."""
    torch.manual_seed(0)
    mu = torch.randn(3, 3, 6, 4, dtype=torch.float64, requires_grad=True)
    sigma = (torch.rand(3, 3, 6, 4, dtype=torch.float64) + 0.5).requires_grad_()
    y = (torch.rand(3, 6) < 0.4).double()
    queue = F.normalize(torch.randn(64, 8, dtype=torch.float64), dim=0)
    queue_ids = torch.randint(0, 36, (64,))
    rows, ids = contrastive_rows(mu, sigma), contrastive_ids(y, 3).reshape(-1)
    ours = supcon_loss(rows, ids, queue / math.sqrt(2), queue_ids, chunk=16)
    g_ours = torch.autograd.grad(ours, (mu, sigma))
    full = torch.cat([torch.cat([F.normalize(mu, dim=-1), F.normalize(sigma, dim=-1)], -1).flatten(0, 2),
                      queue])
    dense = release_supcon(full, torch.cat([ids, queue_ids]))
    g_dense = torch.autograd.grad(dense, (mu, sigma))
    assert float(ours.detach()) == pytest.approx(float(dense.detach()), abs=1e-10)
    for a, b in zip(g_ours, g_dense, strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_d4_calibration_term():
    c = torch.tensor([[.9, .1, .2, .3, .05, .5], [.2, .7, .1, .6, .4, .3]])
    sigma = torch.arange(36, dtype=torch.float32).reshape(2, 6, 3) / 20 + 0.1
    assert float(calibration_loss(c, sigma)) == pytest.approx(0.0803574, abs=1e-5)


def test_d5_fusion_and_both_bces():
    r_mu = torch.tensor([.8, .2, .1, .4, .3, .6])
    r_sigma = torch.tensor([.3, .6, .2, .2, .5, .1])
    c = torch.tensor([.9, .1, .5, .5, .2, .7])
    y = torch.tensor([1.0, 0, 0, 0, 0, 1])
    p = fuse(r_mu, r_sigma, c)
    assert torch.allclose(p, torch.tensor([.75, .56, .15, .30, .46, .45]), atol=1e-6)
    assert (p > LDDU.default_threshold).long().tolist() == [1, 1, 0, 1, 1, 1]
    assert float(F.binary_cross_entropy(p, y)) == pytest.approx(0.507092, abs=1e-5)
    assert float(F.binary_cross_entropy(c, y)) == pytest.approx(0.362806, abs=1e-5)


def test_d6_warmup_cosine_schedule():
    f = lr_lambda("warmup_cosine", 10000, 0.1)
    got = [f(s) for s in (0, 500, 999, 1000, 5000, 9000, 10000)]
    assert got == pytest.approx([0, 0.5, 0.999, 0.975528, 0.5, 0.024472, 0], abs=1e-5)
    assert load_config(None, config="lddu-authors").optim.schedule == "warmup_cosine"


def test_d7_metrics_true_precision_and_recall():
    y = np.array([[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 1, 0], [0] * 6, [1, 0, 1, 0, 0, 0]])
    p = np.array([[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0] * 6, [0, 0, 1, 1, 0, 0]])
    m = compute_metrics(y, p, empty="reference")  # the release scores 0/0 Jaccard as 0
    assert m["micro_f1"] == pytest.approx(0.666667, abs=1e-5)
    assert m["micro_precision"] == pytest.approx(0.75, abs=1e-5)
    assert m["micro_recall"] == pytest.approx(0.60, abs=1e-5)
    assert m["accuracy"] == pytest.approx(0.4583, abs=1e-4)


def test_d8_shapes_queue_pointer_and_deterministic_eval():
    torch.manual_seed(0)
    model = create_model("lddu", AUTHORS_SPEC, {"moco_queue": 64}, preset="lddu-authors")
    batch = make_batch(b=2, t=50, spec=AUTHORS_SPEC)
    out = model.train()(batch)
    loss = model.loss(out, batch)
    assert loss["total"].ndim == 0 and set(loss) == {"final", "cml", "cdl", "crl", "total"}
    assert out.probs.shape == (2, 6)
    assert out.features["mu"].shape == out.features["sigma"].shape == (2, 6, 384)
    loss["total"].backward()
    model.on_train_batch_end(out, batch, lambda t: t)
    assert int(model.queue_ptr) == 36 and not model.queue.requires_grad
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch).probs, model(batch).probs)


def test_parameter_count_at_the_authors_sizes():
    """The release's 5,689,895 used parameters less its three unused BERT poolers (3 x 65,792)."""
    model = create_model("lddu", AUTHORS_SPEC, preset="lddu-authors")
    assert sum(p.numel() for p in model.parameters()) == 5_689_895 - 3 * 65_792
    assert model.queue.shape == (8192, 256)
    # the release's queue: unit columns, labels that are nobody's positive
    assert torch.allclose((model.queue * math.sqrt(2)).norm(dim=0), torch.ones(256), atol=1e-5)
    assert (model.queue_labels < -1).all()


def test_labels_come_from_the_store_not_six():
    spec = DataSpec(("a", "b", "c", "d", "e", "f", "g"), {"text": 6, "audio": 5}, True, {"text": 8, "audio": 8})
    model = create_model("lddu", spec, LDDU.test_params)
    batch = make_batch(b=3, spec=spec)
    out = model.train()(batch)
    assert out.probs.shape == (3, 7)
    model.loss(out, batch)["total"].backward()
    model.on_train_batch_end(out, batch, lambda t: t)
    assert int(model.queue_ptr) == 3 * 2 * 7
    written = model.queue_labels[:42]
    assert int(written.min()) >= 0 and int(written.max()) < 2 * 2 * 7  # classes of 2 modalities x 7 labels


def test_missing_modality_rows_stay_out_of_the_pool_and_queue():
    model = create_model("lddu", TINY_SPEC, {**LDDU.test_params, "queue_init": "fixed"})
    batch = make_batch(b=3).without("visual")
    out = model.train()(batch)
    terms = model.loss(out, batch)
    assert all(torch.isfinite(v) for v in terms.values())
    model.on_train_batch_end(out, batch, lambda t: t)
    ids = model.queue_labels[:3 * 3 * 6].view(3, 3, 6)
    assert (ids[:, 1] == -1).all() and (ids[:, [0, 2]] >= 0).all()


def test_release_weight_decay_covers_the_input_layernorm_gains():
    model = create_model("lddu", TINY_SPEC, LDDU.test_params)
    decayed = {id(p) for p in model.param_groups(0.01)[0]["params"]}
    assert all(id(n.weight) in decayed and id(n.bias) not in decayed for n in model.norms.values())
    model = create_model("lddu", TINY_SPEC, {**LDDU.test_params, "decay_input_norms": False})
    decayed = {id(p) for p in model.param_groups(0.01)[0]["params"]}
    assert not any(id(n.weight) in decayed for n in model.norms.values())


def test_authors_preset_is_train_sh():
    cfg = load_config(None, config="lddu-authors")
    assert (cfg.optim.optimizer, cfg.optim.lr, cfg.optim.warmup_proportion) == ("bertadam", 2e-4, 0.1)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.seed) == (30, 64, 42)
    assert (cfg.model.get("threshold"), cfg.model.get("queue_init")) == (0.21, "authors")
    model = create_model("lddu", TINY_SPEC, preset="lddu-authors")
    c = model.config
    assert (c.cml_weight, c.final_weight, c.cdl_weight, c.crl_weight) == (0.3, 1.0, 1.0, 0.3)
    assert (c.hidden_size, c.latent_size, c.moco_queue, c.temperature) == (256, 128, 8192, 0.07)
    opt = build_optimizer(model, cfg.optim)
    assert type(opt).__name__ == "BertAdam"
    small = load_config(None, config="lddu-small")
    assert small.model["hidden_size"] == 64 and small.train.epochs == 12
    assert create_model("lddu", TINY_SPEC).config.cdl_weight == 0.1  # mmerkit's recipe


def test_the_packaged_recipe_learns(tmp_path):
    """The packaged recipe (cdl_weight 0.1), narrowed, at lddu-small's lr, beats every constant
    prediction on the easy data in seed 1 (the slowest of seeds 1-3 in the probe: test
    micro-F1 0.574 / 0.687 / 0.583 against 0.486 for the best constant)."""
    from mmerkit import api

    result = api.train("lddu", None, out=tmp_path, seeds=[1], overrides=[
        *EASY_DATA, "model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=32",
        "model.latent_size=16", "model.layers={text: 1, visual: 1, audio: 1}", "model.moco_queue=512",
        "model.dropout=0.1", "train.epochs=12", "train.batch_size=32", "optim.lr=1e-3",
        "train.progress=false"])[0]
    assert_beats_every_constant(result.test_metrics)
