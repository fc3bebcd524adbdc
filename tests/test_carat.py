"""CARAT: shapes, loss terms, gradients, prototypes, queue, ablations, missing and unaligned
modalities, state round trip. Tiny dimensions keep the file fast on one core."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmerkit.data.batch import Batch
from mmerkit.data.store import DataSpec
from mmerkit.models.base import build_model_config, create_model
from mmerkit.models.carat import ABLATIONS, CARAT, prototype_ema

DIMS = {"text": 12, "visual": 5, "audio": 7}
LABELS = ("happy", "sad", "anger", "surprise")
SMALL = {"hidden_size": 32, "num_heads": 4, "intermediate_size": 32, "proj_size": 8,
         "layers": {"text": 1, "visual": 1, "audio": 1}, "moco_queue": 256, "dropout": 0.1}
TERMS = {"lsr_clf", "aug_clf", "clf", "cl", "recon_mse", "aug_mse", "total_aug_clf",
         "shuffle_aug_clf", "total"}



def make_spec(dims=DIMS, aligned=True, labels=LABELS):
    return DataSpec(labels, dict(dims), aligned, {m: 8 for m in dims})


def make_batch(spec, b=6, t=8, seed=0, lengths=None):
    g = torch.Generator().manual_seed(seed)
    lengths = lengths or {}
    inputs, masks = {}, {}
    for m, d in spec.modalities.items():
        tm = lengths.get(m, t)
        inputs[m] = torch.randn(b, tm, d, generator=g)
        masks[m] = torch.ones(b, tm, dtype=torch.bool)
    labels = (torch.rand(b, spec.num_labels, generator=g) < 0.4).float()
    labels[:, 0] = labels[:, 0].clamp(min=(torch.arange(b) % 2).float())
    present = torch.ones(b, len(spec.modalities), dtype=torch.bool)
    return Batch(inputs, masks, present, labels, torch.arange(b), spec.modality_names)


def small(spec=None, **kw) -> CARAT:
    torch.manual_seed(0)
    return create_model("carat", spec or make_spec(), {**SMALL, **kw})


def step(model, batch, opt=None):
    model.train()
    out = model(batch)
    terms = model.loss(out, batch)
    if opt is not None:
        opt.zero_grad()
    terms["total"].backward()
    if opt is not None:
        opt.step()
    model.on_train_batch_end(out, batch, lambda t: t)
    return out, terms


def test_forward_shapes_and_terms():
    spec = make_spec()
    model, batch = small(spec), make_batch(spec)
    out, terms = step(model, batch)
    B, M, L = 6, 3, 4
    assert out.logits.shape == out.probs.shape == (B, L)
    assert out.features["z"].shape == (B, M, L, 8)
    assert out.modality_label_scores.shape == (B, M, L)
    assert set(terms) == TERMS  # beta_mse and ctc have weight 0: not computed
    assert all(torch.isfinite(v) for v in terms.values())
    assert torch.allclose(terms["total"], sum(v for k, v in terms.items() if k != "total"))
    assert ((out.probs >= 0) & (out.probs <= 1)).all()
    assert model.threshold == 0.25


def test_every_parameter_gets_a_gradient():
    spec = make_spec()
    model, batch = small(spec, beta_mse_weight=1.0), make_batch(spec)
    model(batch)  # fill the prototypes first so the intrinsic vectors depend on z
    _, _terms = step(model, batch)
    model.zero_grad()
    out = model(batch)
    model.loss(out, batch)["total"].backward()
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []  # no exceptions: the reference's unused poolers do not exist here


def test_eval_uses_hard_prototypes():
    spec = make_spec()
    model, batch = small(spec), make_batch(spec)
    step(model, batch)
    model.eval()
    z = torch.randn(6, 3, 4, 8)
    present = torch.ones(6, 3, dtype=torch.bool)
    c = model._intrinsic(z, present)
    zh = F.normalize(z, dim=-1)
    pick_pos = (zh * model.pos_protos).sum(-1) > (zh * model.neg_protos).sum(-1)
    expect = torch.where(pick_pos[..., None], model.pos_protos, model.neg_protos)
    assert torch.equal(c, expect)
    model.train()
    soft = model._intrinsic(z, present)
    assert not torch.equal(soft, expect)


def naive_prototypes(pos, neg, zh, y, m):
    pos, neg = pos.clone(), neg.clone()
    for i in range(zh.shape[0]):
        for mod in range(zh.shape[1]):
            for j in range(zh.shape[2]):
                if y[i, j] == 1:
                    pos[mod, j] = m * pos[mod, j] + (1 - m) * zh[i, mod, j]
                else:
                    neg[mod, j] = m * neg[mod, j] + (1 - m) * zh[i, mod, j]
    return pos, neg


def test_prototype_update_equals_sequential_ema():
    spec = make_spec()
    model, batch = small(spec, proto_m=0.9), make_batch(spec, b=10)
    model.pos_protos.normal_()
    model.neg_protos.normal_()
    before = model.pos_protos.clone(), model.neg_protos.clone()
    out, _ = step(model, batch)
    zh = F.normalize(out.aux["z"].detach(), dim=-1)
    pos, neg = naive_prototypes(*before, zh, batch.labels, 0.9)
    assert torch.allclose(model.pos_protos, pos, atol=1e-6)
    assert torch.allclose(model.neg_protos, neg, atol=1e-6)
    # the closed form on its own, long sequences included
    z = torch.randn(40, 3, 4, 5)
    sel = torch.rand(40, 3, 4) < 0.5
    p0 = torch.randn(3, 4, 5)
    ref = p0.clone()
    for i in range(40):
        ref = torch.where(sel[i][..., None], 0.9 * ref + 0.1 * z[i], ref)
    assert torch.allclose(prototype_ema(p0, z, sel, 0.9), ref, atol=1e-6)


def test_queue_fifo_wraparound():
    model = small(moco_queue=10)
    model.enqueue(torch.ones(4, 8), torch.arange(4))
    assert int(model.queue_ptr) == 4
    model.enqueue(2 * torch.ones(8, 8), torch.arange(10, 18))
    assert int(model.queue_ptr) == 2
    assert model.queue_labels.tolist() == [16, 17, 2, 3, 10, 11, 12, 13, 14, 15]
    assert model.queue[0, 0] == 2 and model.queue[2, 0] == 1
    model.enqueue(torch.arange(23.0)[:, None].expand(23, 8), torch.arange(23))  # more than Q
    assert int(model.queue_ptr) == (2 + 23) % 10
    assert sorted(model.queue_labels.tolist()) == list(range(13, 23))
    assert model.queue_labels[(2 + 23 - 1) % 10] == 22  # the newest row sits before the pointer
    assert not model.queue.requires_grad and model.queue.grad_fn is None


def test_queue_is_filled_without_autograd_history():
    spec = make_spec()
    model, batch = small(spec), make_batch(spec)
    step(model, batch)
    n_rows = 6 * 3 * 3 * 4  # B x views x M x L
    assert int(model.queue_ptr) == n_rows % 256
    assert model.queue.grad_fn is None
    assert (model.queue_labels >= 0).sum() == min(n_rows, 256)


def test_overfits_32_samples():
    """Default loss weights (contrastive term included); the labels are visible in the inputs
    so the tiny model can fit them in a few seconds."""
    spec = make_spec()
    model = small(spec, dropout=0.0)
    batch = make_batch(spec, b=32, seed=3)
    for m in batch.modalities:
        batch.inputs[m][:, :, :4] += 2.0 * batch.labels[:, None, :]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(120):
        _, terms = step(model, batch, opt)
        first = float(terms["total"].detach()) if first is None else first
    assert float(terms["total"].detach()) < 0.7 * first
    model.eval()
    with torch.no_grad():
        pred = model(batch).probs > model.threshold
    acc = (pred == batch.labels.bool()).float().mean()
    assert acc > 0.95, acc


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_presets_train(name):
    spec = make_spec()
    model, batch = small(spec, **ABLATIONS[name]), make_batch(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        out, terms = step(model, batch, opt)
        assert all(torch.isfinite(v) for v in terms.values()), terms
        assert torch.isfinite(out.probs).all()
    if ABLATIONS[name].get("cl_weight") == 0:
        assert "cl" not in terms


def test_ablation_presets_resolve_from_the_table():
    from mmerkit.config import load_config

    for name, changes in ABLATIONS.items():
        model = load_config(config=name).model
        assert {k: model[k] for k in changes} == changes, name


def test_missing_modality_is_finite():
    spec = make_spec()
    model, batch = small(spec), make_batch(spec)
    batch = batch.without("visual")
    batch.masks["audio"][0] = False  # and one more sample with audio missing
    batch.present[0, 2] = False
    batch.masks["text"][1, 5:] = False  # padding
    out, terms = step(model, batch)
    assert torch.isfinite(out.probs).all()
    assert all(torch.isfinite(v) for v in terms.values())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(batch).probs).all()


def test_padding_is_ignored():
    spec = make_spec()
    model = small(spec).eval()
    batch = make_batch(spec)
    for m in batch.modalities:
        batch.masks[m][:, 6:] = False
    with torch.no_grad():
        a = model(batch).probs
        for m in batch.modalities:
            batch.inputs[m][:, 6:] = 100.0
        b = model(batch).probs
    assert torch.allclose(a, b, atol=1e-5)


def test_unaligned_with_aligner_and_ctc():
    spec = DataSpec(LABELS, dict(DIMS), False, {"text": 8, "visual": 20, "audio": 14})
    model = small(spec, ctc_weight=0.5)
    assert model.use_aligner
    batch = make_batch(spec, lengths={"text": 8, "visual": 20, "audio": 14})
    batch.masks["audio"][0, 10:] = False
    out, terms = step(model, batch)
    assert "ctc" in terms and torch.isfinite(terms["ctc"])
    assert model.aligners["visual"].lstm.weight_ih_l0.grad is not None
    assert torch.isfinite(out.probs).all()


def test_other_modality_counts():
    for dims in ({"audio": 6}, {"a": 4, "b": 3, "c": 5, "d": 2}):
        spec = make_spec(dims)
        model, batch = small(spec, layers={}, default_layers=1), make_batch(spec)
        out, terms = step(model, batch)
        assert model.recon[0].in_features == len(dims) * 32
        assert out.modality_label_scores.shape == (6, len(dims), 4)
        assert all(torch.isfinite(v) for v in terms.values())


def test_batch_anchors_and_authors_queue():
    spec = make_spec()
    model, batch = small(spec, anchors="batch", queue_init="authors"), make_batch(spec)
    assert (model.queue_labels < -1).all()
    _out, terms = step(model, batch)
    assert torch.isfinite(terms["cl"])


def test_state_dict_round_trip():
    spec = make_spec()
    model, batch = small(spec), make_batch(spec)
    step(model, batch)
    clone = small(spec, moco_queue=256)
    clone.load_state_dict(model.state_dict())
    model.eval()
    clone.eval()
    with torch.no_grad():
        a, b = model(batch), clone(batch)
    assert torch.equal(a.probs, b.probs)
    assert torch.equal(model.queue, clone.queue) and int(clone.queue_ptr) == int(model.queue_ptr)


def test_shuffle_keeps_labels_with_their_vectors():
    spec = make_spec()
    model = small(spec)
    B, M, L = 6, 3, 4
    s = torch.arange(B)[:, None, None, None] * 100 + torch.arange(M)[None, :, None, None] * 10 \
        + torch.arange(L)[None, None, :, None] + torch.zeros(B, M, L, 2)
    y = torch.rand(B, L)
    s2, y2 = model.shuffle(s.float(), y)
    src_b = (s2[..., 0] // 100).long()
    src_l = (s2[..., 0] % 10).long()
    assert torch.equal(src_l, torch.arange(L).expand(B, M, L))
    assert torch.equal(y2, y[src_b, src_l])
    for m in range(M):  # every (m, l) slot draws a permutation of the samples
        for lab in range(L):
            assert sorted(src_b[:, m, lab].tolist()) == list(range(B))


# the authors' train.sh values (specs/carat.md §1 and §4)
AUTHORS = {"hidden_size": 256, "num_heads": 8, "intermediate_size": 256, "dropout": 0.3,
           "layers": {"text": 6, "visual": 4, "audio": 4}, "proj_size": 64, "proto_m": 0.99,
           "moco_queue": 8192, "temperature": 0.07, "threshold": 0.25, "lsr_clf_weight": 0.01,
           "aug_clf_weight": 0.1, "cl_weight": 1.0, "recon_mse_weight": 1.0, "aug_mse_weight": 1.0,
           "beta_mse_weight": 0.0, "total_aug_clf_weight": 1.0, "shuffle_aug_clf_weight": 0.1}


def test_config_defaults_and_authors_preset_are_the_authors_values():
    from mmerkit.config import load_config
    from mmerkit.models.carat import CaratConfig

    defaults = CaratConfig().model_dump()
    assert {k: defaults[k] for k in AUTHORS} == AUTHORS
    cfg = load_config("carat", None, "carat-authors")
    authors = build_model_config("carat", cfg.model)
    assert {k: getattr(authors, k) for k in AUTHORS} == AUTHORS
    assert (cfg.optim.optimizer, cfg.optim.lr, cfg.optim.warmup_proportion, cfg.optim.schedule) == \
        ("bertadam", 5e-5, 0.1, "linear")
    ours = build_model_config("carat", load_config("carat", None, None).model)
    # mmerkit's recipe: only lr and three weights differ
    assert {k for k in AUTHORS if getattr(ours, k) != AUTHORS[k]} == {"cl_weight", "recon_mse_weight",
                                                                      "aug_mse_weight"}


def test_aggregation_and_reconstruction_are_xavier_uniform():
    """carat.md addendum: the authors initialise the aggregation MLP and the reconstruction nets
    with xavier-uniform, whose range is 2-2.4x torch's default (1 / sqrt(fan_in))."""
    model = small()
    layers = [*model.recon, model.agg.fc1, model.agg.fc2, model.enc[0].fc1, model.dec[0].fc2]
    for lin in layers:
        fan_out, fan_in = lin.weight.shape
        xavier = (6.0 / (fan_in + fan_out)) ** 0.5
        assert xavier > 1.3 / fan_in ** 0.5  # the two ranges are told apart at this size
        assert 0.9 * xavier < lin.weight.abs().max() <= xavier


def test_one_label_convention_for_soft_labels():
    """A soft target of 0.3 is negative both for the prototypes and for the contrastive class
    (the old code counted it as negative for one and positive for the other)."""
    spec = make_spec()
    model = small(spec, proto_m=0.0)  # m = 0: a prototype becomes the last sample's z
    batch = make_batch(spec, b=1)
    batch.labels[:] = torch.tensor([[0.3, 0.9, 0.0, 1.0]])
    out, _ = step(model, batch)
    z = F.normalize(out.aux["z"].detach(), dim=-1)[0]  # (M, L, p)
    torch.testing.assert_close(model.neg_protos[:, 0], z[:, 0])  # 0.3 updated the negative one
    labels = model._pool_labels(batch.labels, out.aux["present"]).view(-1, 3, 4)[0]  # first view
    L = 4
    negative_class = 0 + L * (2 * torch.arange(3) + 1)
    assert labels[:, 0].tolist() == negative_class.tolist()
