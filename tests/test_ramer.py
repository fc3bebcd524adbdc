"""RAMer: CARAT core equivalence, stack shuffle modes, prototype padding, adversarial terms,
personality attention, and a MEmoR-shaped store trained end to end."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_carat import LABELS, SMALL, make_batch, make_spec, step

from mmerkit.config import load_config
from mmerkit.data.store import DataSpec
from mmerkit.models.base import create_model
from mmerkit.models.ramer import RamerConfig, deal_order

ADV_TERMS = {"adv_private", "adv_common", "diff_private", "diff_common", "cml"}
# RAMer with every addition switched off and CARAT's loss weights: CARAT itself
AS_CARAT = {"adversarial": False, "prototype_padding": False, "shuffle_mode": "random",
            "shuffle_aug_clf_weight": 0.1, "total_aug_clf_weight": 1.0, "personality": None,
            "max_positions": {"text": 60}}


def ramer(spec=None, **kw):
    torch.manual_seed(0)
    return create_model("ramer", spec or make_spec(), {**SMALL, "dropout": 0.0, **kw})


def naive_deal(items, k, rounds):
    for _ in range(rounds):
        n, kk = len(items), min(k, len(items))
        sizes = [n // kk + (1 if i < n % kk else 0) for i in range(kk)]
        stacks, start = [], 0
        for s in sizes:
            stacks.append(items[start:start + s])
            start += s
        items = [st[i] for i in range(max(sizes)) for st in stacks if i < len(st)]
    return items


def test_defaults_are_the_release_and_the_authors_preset_loads():
    c = RamerConfig()
    assert c.layers == {"text": 3, "visual": 3, "audio": 3} and c.hidden_size == 256
    assert (c.shuffle_aug_clf_weight, c.total_aug_clf_weight) == (1.0, 0.0)
    assert (c.adv_weight, c.diff_weight, c.cml_weight) == (0.01, 5e-6, 0.5)
    assert (c.cl_weight, c.recon_mse_weight, c.aug_mse_weight, c.threshold) == (1.0, 1.0, 1.0, 0.25)
    assert c.shuffle_mode == "interleave" and c.adversarial
    cfg = load_config("ramer", None, "ramer-authors")
    assert cfg.model["cl_weight"] == 1.0 and cfg.optim.lr == 5e-5 and cfg.train.epochs == 150


@pytest.mark.parametrize("n,k,rounds", [(6, 2, 1), (10, 4, 2), (7, 3, 2), (3, 3, 2), (2, 4, 1), (33, 4, 3)])
def test_deal_order_matches_a_naive_deal(n, k, rounds):
    assert deal_order(n, k, rounds).tolist() == naive_deal(list(range(n)), k, rounds)


def test_with_its_additions_off_ramer_is_carat():
    spec, batch = make_spec(), make_batch(make_spec())
    carat = create_model("carat", spec, {**SMALL, "dropout": 0.0})
    model = ramer(spec, **AS_CARAT)
    model.load_state_dict(carat.state_dict())
    for m in (carat, model):
        m.eval()
    torch.testing.assert_close(model(batch).probs, carat(batch).probs)
    model.train(), carat.train()
    torch.manual_seed(3)
    got = model.loss(model(batch), batch)
    torch.manual_seed(3)
    want = carat.loss(carat(batch), batch)
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k])


def test_adversarial_terms_are_logged_and_switchable():
    batch = make_batch(make_spec())
    _, terms = step(ramer(), batch)
    assert ADV_TERMS <= set(terms) and all(torch.isfinite(v) for v in terms.values())
    total = sum(v for k, v in terms.items() if k != "total")
    torch.testing.assert_close(terms["total"], total)
    assert "total_aug_clf" not in terms  # the release drops the un-shuffled aggregator loss
    _, off = step(ramer(adversarial=False), batch)
    assert not ADV_TERMS & set(off)


def test_private_features_come_from_the_original_and_common_from_the_reconstructed():
    model, batch = ramer(), make_batch(make_spec())
    model.eval()  # no dropout: the terms are deterministic functions of aux
    out = model(batch)
    base = model.loss(out, batch)
    for key, moves, stays in (("e", "adv_private", "adv_common"), ("srr", "adv_common", "adv_private")):
        aux = dict(out.aux, **{key: torch.randn_like(out.aux[key])})
        terms = model.loss(dataclasses.replace(out, aux=aux), batch)
        assert not torch.allclose(terms[moves], base[moves]), key
        torch.testing.assert_close(terms[stays], base[stays])


def test_upstream_reverse_is_one_reversal_for_every_label():
    model = ramer(shuffle_mode="upstream_reverse")
    sample, mod = model.stack_indices(5, 3, 4)
    assert torch.equal(sample, torch.arange(4, -1, -1)[:, None, None].expand(5, 3, 4))
    assert torch.equal(mod, torch.tensor([2, 1, 0])[None, :, None].expand(5, 3, 4))


def test_interleave_mixes_samples_and_modalities_deterministically():
    model = ramer()
    B, M, L = 8, 3, 4
    sample, mod = model.stack_indices(B, M, L)
    assert torch.equal(sample, model.stack_indices(B, M, L)[0])  # deterministic
    for m in range(M):
        for lab in range(L):  # every (modality row, label) column is a permutation of the batch
            assert sorted(sample[:, m, lab].tolist()) == list(range(B))
    for b in range(B):  # one synthetic row draws its label slots from several samples
        assert len(set(sample[b, 0].tolist())) > 1
        assert len(set(mod[b, 0].tolist())) > 1
        for lab in range(L):
            assert sorted(mod[b, :, lab].tolist()) == list(range(M))
    s = torch.randn(B, M, L, 5)
    y = (torch.rand(B, L) > 0.5).float()
    s2, y2 = model.shuffle(s, y)
    assert torch.equal(s2[1, 2, 3], s[sample[1, 2, 3], mod[1, 2, 3], 3])
    assert y2[1, 2, 3] == y[sample[1, 2, 3], 3]


def test_prototype_padding_stands_in_for_a_missing_modality():
    spec = make_spec()
    batch = make_batch(spec)
    model = ramer(spec)
    step(model, batch)  # prototypes become non-zero
    present = batch.present.clone()
    present[0, 1] = False  # sample 0 lacks visual
    z = torch.randn(6, 3, len(LABELS), 8)
    w = model._prototype_weights(z, present)
    plain = torch.nn.functional.normalize(z, dim=-1)
    sims = torch.stack([(plain * model.pos_protos).sum(-1), (plain * model.neg_protos).sum(-1)], -1)
    own = sims.softmax(-1)
    torch.testing.assert_close(w[1:], own[1:])
    torch.testing.assert_close(w[0, 1], (own[0, 0] + own[0, 2]) / 2)  # consensus of text, audio
    r, ci = torch.randn(6, 3, 4, 32), torch.randn(6, 3, 4, 32)
    slots = model._first_level_slots(r, ci, present)
    assert torch.equal(slots[0, 1], ci[0, 1]) and torch.equal(slots[1:], r[1:])
    assert torch.equal(slots[0, 0], r[0, 0])
    off = ramer(spec, prototype_padding=False)
    assert torch.equal(off._first_level_slots(r, ci, present), r)


def test_missing_modality_changes_the_first_level_input():
    spec = make_spec()
    batch = make_batch(spec)
    batch = batch.without("visual")
    for pad in (True, False):
        model = ramer(spec, prototype_padding=pad).eval()
        probs = model(batch).probs
        assert torch.isfinite(probs).all()


def personality_spec():
    spec = make_spec()
    return dataclasses.replace(spec, extras={"personality": 6, "clip": 1, "character": 1})


def personality_batch(spec, clips=(0, 0, 0, 1, 1, 2), chars=(0, 1, 2, 0, 1, 0), seed=0):
    batch = make_batch(spec, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    batch.extras = {"personality": torch.randn(6, 6, generator=g),
                    "clip": torch.tensor(clips, dtype=torch.float32)[:, None],
                    "character": torch.tensor(chars, dtype=torch.float32)[:, None]}
    return batch


def test_personality_attends_within_the_same_clip_and_person_only():
    spec = personality_spec()
    model = ramer(spec).eval()
    assert set(model.context_attn) == {"group", "person"}
    batch = personality_batch(spec, chars=(0, 1, 2, 3, 4, 5))  # no shared person
    base = model(batch).probs
    other = personality_batch(spec, chars=(0, 1, 2, 3, 4, 5))
    other.inputs["text"][5] += torch.randn(other.inputs["text"][5].shape)  # alone in clip 2
    changed = model(other).probs
    torch.testing.assert_close(changed[:5], base[:5])
    assert not torch.allclose(changed[5], base[5])
    same_clip = personality_batch(spec, chars=(0, 1, 2, 3, 4, 5))
    same_clip.inputs["text"][0] += torch.randn(same_clip.inputs["text"][0].shape)  # clip 0: 0, 1, 2
    moved = model(same_clip).probs
    assert not torch.allclose(moved[1], base[1])
    torch.testing.assert_close(moved[3:], base[3:])


def test_personality_fills_a_missing_modality_and_missing_keys_are_masked():
    spec = personality_spec()
    model = ramer(spec).eval()
    batch = personality_batch(spec).without("audio")
    out = model(batch)
    assert torch.isfinite(out.probs).all()
    e = out.aux["e"]
    assert e[:, 2].abs().sum() > 0  # personality gives the missing modality a slot vector
    # a sample's missing-modality content cannot leak into another sample of its clip
    other = personality_batch(spec).without("audio")
    other.inputs["audio"][1] += torch.randn(other.inputs["audio"][1].shape)  # masked anyway
    torch.testing.assert_close(model(other).probs, out.probs)


def test_without_personality_extras_the_branch_is_off():
    model = ramer(make_spec())
    assert model.personality_dim == 0 and not hasattr(model, "person_fuse")
    spec = dataclasses.replace(make_spec(), extras={"personality": 6})
    model = ramer(spec)
    assert model.personality_dim == 6 and len(model.context_attn) == 0
    batch = personality_batch(spec)
    _, terms = step(model, batch)
    assert torch.isfinite(terms["total"])


def test_trains_on_a_memor_store_with_personality(tmp_path):
    from test_memor import build_release

    from mmerkit import api
    from mmerkit.data.memor import convert_memor

    build_release(tmp_path / "memor")
    store = convert_memor(tmp_path / "memor", tmp_path / "store")
    assert {"personality", "clip", "character"} <= set(store.spec().extras)
    results = api.train("ramer", tmp_path / "store", out=tmp_path / "runs", epochs=1,
                        overrides=["model.hidden_size=16", "model.num_heads=2",
                                   "model.intermediate_size=16", "model.proj_size=8",
                                   "model.moco_queue=64", "model.disc_hidden=8",
                                   "model.layers={text: 1, visual: 1, audio: 1}",
                                   "train.batch_size=8", "train.progress=false"])
    assert 0.0 <= results[0].test_metrics["micro_f1"] <= 1.0


def test_spec_without_the_default_modalities_works():
    spec = DataSpec(("a", "b"), {"x": 4, "y": 3}, True, {"x": 5, "y": 5})
    model = ramer(spec, layers={})
    batch = make_batch(spec)
    _, terms = step(model, batch)
    assert torch.isfinite(terms["total"])
