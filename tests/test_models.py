"""Every registered model gets these tests for free (timm-style): shapes, finite losses, gradients,
overfitting 32 samples, a missing modality, and an export round trip with identical predictions.

Closed-form (classic) models have no gradients: they get the same checks with "fit on the batch"
in place of gradient steps (`fit_if_closed_form`), and no backward test."""

import pytest
import torch
from helpers import SPEC, make_batch

from mmerkit.checkpoint import load_state_into, read_export, save_export
from mmerkit.data.batch import Batch
from mmerkit.data.store import DataSpec
from mmerkit.models.base import MMERModel, SplitData, create_model, list_models, model_class

torch.set_num_threads(1)


def build(name: str, seed: int = 0) -> MMERModel:
    torch.manual_seed(seed)
    return create_model(name, SPEC, model_class(name).test_params)


NEURAL = [n for n in list_models() if not model_class(n).closed_form]
CLASSIC = [n for n in list_models() if model_class(n).closed_form]


def fit_if_closed_form(model: MMERModel, batch: Batch) -> MMERModel:
    """A closed-form (classic) model is fitted on `batch` through the contract's hook, as the
    engine does (every split read is this batch); a neural one is returned as built."""
    if model.closed_form:
        with torch.no_grad():
            model.fit_closed_form(SplitData(read=lambda split, fn: fn(batch).cpu().numpy()))
    return model


@pytest.mark.parametrize("name", NEURAL)
def test_forward_backward_and_finite_losses(name):
    model = build(name)
    batch = make_batch()
    out = model(batch)
    assert out.logits.shape == out.probs.shape == (32, SPEC.num_labels)
    assert ((out.probs >= 0) & (out.probs <= 1)).all()
    losses = model.loss(out, batch)
    assert "total" in losses and all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.on_train_batch_end(out, batch, lambda x: x)
    if out.modality_label_scores is not None:
        assert out.modality_label_scores.shape == (32, len(SPEC.modalities), SPEC.num_labels)


@pytest.mark.parametrize("name", CLASSIC)
def test_classic_forward_and_finite_losses(name):
    batch = make_batch()
    model = fit_if_closed_form(build(name), batch)
    out = model(batch)
    assert out.logits.shape == out.probs.shape == (32, SPEC.num_labels)
    assert ((out.probs >= 0) & (out.probs <= 1)).all()
    losses = model.loss(out, batch)
    assert "total" in losses and all(torch.isfinite(v) for v in losses.values())
    assert not any(p.requires_grad for p in model.parameters())  # nothing for an optimiser
    model.on_train_batch_end(out, batch, lambda x: x)
    assert out.modality_label_scores.shape == (32, len(SPEC.modalities), SPEC.num_labels)
    with pytest.raises(RuntimeError, match="not fitted"):
        build(name)(batch)


@pytest.mark.parametrize("name", list_models())
def test_missing_modality_is_ignored(name):
    """A removed modality (masks and `present` False) is really ignored: whatever its padded
    inputs hold, the predictions are the same; and training on such a batch stays finite."""
    model = fit_if_closed_form(build(name), make_batch())
    for missing in SPEC.modalities:
        batch = make_batch(missing=missing)
        model.train(True)
        out = model(batch)
        assert all(torch.isfinite(v) for v in model.loss(out, batch).values()), missing
        model.eval()
        noisy = Batch({**batch.inputs, missing: torch.randn_like(batch.inputs[missing]) * 5}, batch.masks,
                      batch.present, batch.labels, batch.index, batch.modalities, batch.extras)
        with torch.no_grad():
            clean, dirty = model(batch).probs, model(noisy).probs
        assert torch.isfinite(clean).all(), missing
        torch.testing.assert_close(dirty, clean, msg=lambda m, miss=missing: f"{name} reads masked {miss}: {m}")


UNALIGNED = DataSpec(SPEC.labels, dict(SPEC.modalities), False, dict(SPEC.max_len))


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("missing", list(SPEC.modalities))
@pytest.mark.parametrize("spec", [SPEC, UNALIGNED], ids=["aligned", "unaligned"])
def test_every_model_uses_what_is_present(name, missing, spec):
    """Samples that lack one modality (text included, on unaligned data where the other
    modalities are soft-aligned to text) still get answers that depend on their other inputs,
    and each sample's answer does not depend on the samples batched with it."""
    torch.manual_seed(0)
    fit_on = make_batch(spec=spec)
    model = fit_if_closed_form(create_model(name, spec, model_class(name).test_params), fit_on).eval()
    batch = make_batch(16, seed=3, missing=missing, spec=spec)
    with torch.no_grad():
        probs = model(batch).probs
        assert float((probs - probs[0]).abs().max()) > 1e-4, f"{name}: one answer for every sample without {missing}"
        alone = model(_rows(batch, [5])).probs
    torch.testing.assert_close(alone[0], probs[5], atol=1e-5, rtol=1e-4)


def _rows(batch: Batch, rows: list[int]) -> Batch:
    pick = torch.as_tensor(rows)
    return Batch({m: x[pick] for m, x in batch.inputs.items()}, {m: x[pick] for m, x in batch.masks.items()},
                 batch.present[pick], batch.labels[pick], batch.index[pick], batch.modalities,
                 {k: v[pick] for k, v in batch.extras.items()})


@pytest.mark.parametrize("name", NEURAL)
def test_overfits_32_samples(name):
    model = build(name)
    batch = make_batch(seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        out = model(batch)
        loss = model.loss(out, batch)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.on_train_batch_end(out, batch, lambda x: x)
    model.eval()
    with torch.no_grad():
        probs = model(batch).probs
    pred = (probs > model.threshold).float()
    acc = (pred == batch.labels).float().mean().item()
    assert acc > 0.95, f"{name} reached only {acc:.3f} bit accuracy on 32 training samples"


@pytest.mark.parametrize("name", CLASSIC)
def test_classic_overfits_32_samples(name):
    model = build(name)
    batch = make_batch(seed=1)
    fit_if_closed_form(model, batch).eval()
    with torch.no_grad():
        probs = model(batch).probs
    pred = (probs > model.threshold).float()
    acc = (pred == batch.labels).float().mean().item()
    assert acc > 0.95, f"{name} reached only {acc:.3f} bit accuracy on 32 training samples"


@pytest.mark.parametrize("name", list_models())
def test_export_round_trip_identical(name, tmp_path):
    model = fit_if_closed_form(build(name), make_batch(seed=1)).eval()
    batch = make_batch(seed=2)
    with torch.no_grad():
        before = model(batch).probs
    save_export(tmp_path, model, {"model_name": name})
    meta, state = read_export(tmp_path)
    fresh = build(name, seed=123).eval()
    load_state_into(fresh, state, tmp_path)
    with torch.no_grad():
        after = fresh(batch).probs
    torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_every_model_has_paper_and_tiny_config():
    for name in list_models():
        cls = model_class(name)
        assert cls.paper and cls.test_params, name
        # a year only where there is a paper to date: the fusion baselines are generic
        assert (cls.year is None) == (name in ("early_fusion", "late_fusion")) and (cls.year or 2000) > 1900, name


@pytest.mark.parametrize("name", NEURAL)
def test_most_relevant_modality_is_one_the_sample_has(name):
    """Issue 20 item 2: `top_modality` (CLI, JSON, CSV, the server) never names a modality the
    sample lacks, whatever score the model gives the absent one."""
    from mmerkit.predict import Predictor

    model = build(name)
    predictor = Predictor(model, {"spec": SPEC.to_dict(), "labels": list(SPEC.labels), "threshold": 0.5})
    batch = make_batch(16, seed=2, missing="text")
    preds = predictor.predict(batch)
    assert preds.present is not None and not preds.present[:, 0].any()
    if preds.top_modality is None:
        pytest.skip(f"{name} gives no modality-to-label scores")
    assert (preds.top_modality != 0).all()
    named = {m for row in preds.rows(joined=False) for m in (x.split(":")[1] for x in row.get("modalities", []))}
    assert "text" not in named


@pytest.mark.parametrize("name", list_models())
def test_one_name_builds_one_model_at_every_entry_point(name):
    """`create_model(name)`, `api.train` / `mmer train -m name` (api.build_config) and the
    engine build the same model config for a name: mmerkit's recipe, the authors' values one
    preset away."""
    from mmerkit.api import build_config
    from mmerkit.config import packaged_names

    built = create_model(name, SPEC).config.model_dump(mode="json")
    trained = build_config(name, None, None, []).model
    assert built == trained
    preset = f"{name}-authors"
    if preset in packaged_names("presets"):
        authors = create_model(name, SPEC, preset=preset).config.model_dump(mode="json")
        assert authors == build_config(name, None, preset, []).model
        assert authors != built or name not in ("carat", "ramer")


def test_a_preset_of_another_model_is_refused():
    from mmerkit.errors import ConfigError

    with pytest.raises(ConfigError, match="for model 'tailor'"):
        create_model("carat", SPEC, preset="tailor-authors")


def _batch_of_lengths(spec, lengths: list[dict[str, int]], seed: int = 0) -> Batch:
    """One sample per entry of `lengths` ({modality: steps}), zero padded to the longest."""
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    t = {m: max(1, *(row[m] for row in lengths)) for m in spec.modalities}
    inputs = {m: torch.randn(b, t[m], d, generator=g) for m, d in spec.modalities.items()}
    masks = {m: torch.arange(t[m])[None, :] < torch.tensor([row[m] for row in lengths])[:, None]
             for m in spec.modalities}
    for m in spec.modalities:
        inputs[m] = inputs[m] * masks[m][..., None]
    y = torch.zeros(b, spec.num_labels)
    y[:, 0] = 1
    present = torch.ones(b, len(spec.modalities), dtype=torch.bool)
    return Batch(inputs, masks, present, y, torch.arange(b), spec.modality_names)


@pytest.mark.parametrize("spec", [SPEC, UNALIGNED], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("name", list_models())
def test_declared_max_steps_are_what_the_model_takes(name, spec):
    """The contract's `max_steps()`: inputs of the declared length pass, one step more fails (the
    server sets its request limits from it)."""
    torch.manual_seed(0)
    model = fit_if_closed_form(create_model(name, spec, model_class(name).test_params), make_batch(spec=spec)).eval()
    caps = model.max_steps()
    assert set(caps) == set(spec.modalities)
    declared = [c for c in caps.values() if c is not None]
    t = min(declared) if declared else 3 * max(spec.max_len.values())
    with torch.no_grad():
        assert torch.isfinite(model(_batch_of_lengths(spec, [dict.fromkeys(spec.modalities, t)] * 2)).probs).all()
        if declared:
            with pytest.raises((ValueError, RuntimeError, IndexError)):
                model(_batch_of_lengths(spec, [dict.fromkeys(spec.modalities, t + 1)] * 2))


@pytest.mark.parametrize("name", list_models())
def test_padding_invariant_models_answer_the_same_in_any_batch(name):
    """A model declaring `padding_invariant` gives a sample the same answer alone and in a batch
    padded to a longer sample (the server then batches requests of any lengths together)."""
    cls = model_class(name)
    if not cls.padding_invariant:
        pytest.skip(f"{name} declares that its answers depend on padding")
    torch.manual_seed(0)
    model = fit_if_closed_form(create_model(name, SPEC, cls.test_params), make_batch()).eval()
    short, longer = dict.fromkeys(SPEC.modalities, 3), dict.fromkeys(SPEC.modalities, 6)
    both = _batch_of_lengths(SPEC, [short, longer], seed=1)
    alone = Batch({m: x[:1, :3] for m, x in both.inputs.items()}, {m: k[:1, :3] for m, k in both.masks.items()},
                  both.present[:1], both.labels[:1], both.index[:1], both.modalities)
    with torch.no_grad():
        torch.testing.assert_close(model(alone).probs, model(both).probs[:1], rtol=0, atol=1e-5)
