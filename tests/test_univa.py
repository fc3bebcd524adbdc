"""UniVA against the spec's expected values (specs/univa_lddu.md, Part C, U1-U7: computed with
the release's own functions), its shapes and parameter count at the authors' sizes, the VA side
input (store extras or labels) and its errors."""

import dataclasses

import pytest
import torch
from helpers import SPEC, assert_mentions, make_batch, mmer_fails

from mmerkit.data.batch import Batch
from mmerkit.data.store import DataSpec
from mmerkit.errors import ConfigError
from mmerkit.metrics import compute_metrics
from mmerkit.models.base import create_model
from mmerkit.models.univa import (
    label_similarity_matrix,
    label_similarity_regulariser,
    labels_to_va,
    multilabel_kl,
    normalise_va,
    univa_total,
    va_points,
    va_supcon_loss,
)

torch.set_num_threads(1)
ATOL = 1e-5
MOSEI = ("happy", "sad", "anger", "surprise", "disgust", "fear")
# spec A2: the release's shipped MOSEI label-similarity matrix (4 decimals)
MOSEI_M = torch.tensor([
    [1.0000, -0.8500, -0.2144, 0.8843, -0.5292, -0.3724],
    [-0.8500, 1.0000, -0.3322, -0.9976, 0.0029, -0.1723],
    [-0.2144, -0.3322, 1.0000, 0.2665, 0.9423, 0.9863],
    [0.8843, -0.9976, 0.2665, 1.0000, -0.0717, 0.1041],
    [-0.5292, 0.0029, 0.9423, -0.0717, 1.0000, 0.9845],
    [-0.3724, -0.1723, 0.9863, 0.1041, 0.9845, 1.0000]], dtype=torch.float64)
Z = torch.tensor([[2, .5, -1, 0, .3, -.5], [.1, 1.5, .2, -.3, 1, 0]], dtype=torch.float64)
Y = torch.tensor([[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 1, 0]], dtype=torch.float64)
F_U3 = torch.tensor([[1, 0, 0], [.8, .6, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
VA_U3 = torch.tensor([[.10, .20], [.15, .25], [.90, .90], [.12, .18]], dtype=torch.float64)


def close(x, expected):
    assert abs(float(x) - expected) < ATOL, (float(x), expected)


def test_u1_kl_times_1000_and_predictions():
    s = Z.log_softmax(1)
    close(1000 * multilabel_kl(s, Y), 20.23623)
    assert ((s.exp() > 0.18).long() == Y.long()).all()


def test_u7_label_similarity_matrix_is_the_releases():
    m = label_similarity_matrix(va_points(MOSEI)).double()
    torch.testing.assert_close(m, MOSEI_M, atol=5e-5, rtol=0)  # the shipped file, printed to 4 dp


def test_u2_regulariser_on_log_probs():
    s = Z.log_softmax(1)
    m = label_similarity_matrix(va_points(MOSEI)).double()
    reg = label_similarity_regulariser(s, m)
    close(reg, -1.872729)
    close(1000 * multilabel_kl(s, Y) + reg, 18.363504)


@pytest.mark.parametrize(("scale", "tau", "delta", "expected"), [
    (1, 0.7, 0.1, 1.797129), (1, 0.4, 0.1, 1.898363), (1, 0.7, 0.0, 1.168558),
    (10, 0.7, 0.1, 62.857147)])  # x10: the features are NOT normalised
def test_u3_va_aware_supcon(scale, tau, delta, expected):
    close(va_supcon_loss(F_U3 * scale, VA_U3, tau, delta), expected)


def test_u3_gradient_equals_the_releases_2b_formulation():
    """The (B, B) shortcut has the value and gradient of the release's (B, 2B) formula."""
    def release(f, va, tau, delta):
        b = len(f)
        pos = ((torch.cdist(va, va) < delta) | torch.eye(b, dtype=torch.bool)).double()
        c = torch.cat([f, f])
        logits = f @ c.T / tau
        logits = logits - logits.max(1, keepdim=True).values.detach()
        keep = torch.ones(b, 2 * b, dtype=torch.float64)
        keep[torch.arange(b), torch.arange(b)] = 0
        p = pos.repeat(1, 2) * keep
        logp = logits - torch.log((keep * logits.exp()).sum(1, keepdim=True) + 1e-10)
        return (-(p * logp).sum(1) / (p.sum(1) + 1e-10)).mean()

    f = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    va = torch.rand(7, 2, dtype=torch.float64) * 0.3
    ours = va_supcon_loss(f, va, 0.4, 0.1)
    g_ours, = torch.autograd.grad(ours, f)
    ref = release(f, va, 0.4, 0.1)
    g_ref, = torch.autograd.grad(ref, f)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)


def test_u4_va_normalisation_uses_valence_statistics_for_both_columns():
    va = torch.tensor([[.2, .9], [.4, .1], [.6, .5], [.8, .3]], dtype=torch.float64)
    expected = torch.tensor([[-1.161895, 1.549193], [-0.387298, -1.549193], [0.387298, 0],
                             [1.161895, -0.774597]], dtype=torch.float64)
    torch.testing.assert_close(normalise_va(va), expected, atol=ATOL, rtol=0)


def test_u5_aggregation_and_total():
    lt = va_supcon_loss(F_U3, VA_U3, 0.7, 0.1)
    la, lv = va_supcon_loss(F_U3.flip(0), VA_U3, 0.7, 0.1), va_supcon_loss(F_U3.roll(1, 0), VA_U3, 0.7, 0.1)
    close(la, 2.025701)
    close(lv, 2.025701)
    mosei = (3 * lt + la + lv) / 3
    close(mosei, 3.147596)
    close((lt + la + lv) / 3, 1.949510)
    s = Z.log_softmax(1)
    reg = label_similarity_regulariser(s, label_similarity_matrix(va_points(MOSEI)).double())
    close(univa_total(1000 * multilabel_kl(s, Y), reg, mosei, 0.45), 11.516346)


def test_u6_metrics_with_the_releases_empty_convention():
    y = [[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 1, 0], [0] * 6, [1, 0, 1, 0, 0, 0]]
    p = [[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0] * 6, [0, 0, 1, 1, 0, 0]]
    m = compute_metrics(y, p, empty="reference")
    close(round(100 * m["accuracy"], 2), 45.83)
    close(m["hamming_loss"], 0.125)
    close(round(100 * m["micro_f1"], 2), 66.67)
    close(round(100 * m["macro_f1"], 2), 44.44)


# ----------------------------------------------------------------------------- the model


def authors_spec() -> DataSpec:
    return DataSpec(MOSEI, {"text": 300, "visual": 35, "audio": 74}, True,
                    {"text": 50, "visual": 50, "audio": 50})


def expected_parameters(spec: DataSpec, layers: dict[str, int], H=768, F=3072, label_similarity=False) -> int:
    """Counted from spec A2: per layer Q/K/V/O (H x H + H), two LayerNorms (2H each), FFN; per
    modality the input Linear, the position table, the layers and the additive pooling (q, P, Q,
    w); the head Linear(M H -> C); the C x C matrix when the regulariser is on."""
    layer = 4 * (H * H + H) + 2 * 2 * H + (H * F + F) + (F * H + H)
    pool = H + 2 * (H * H + H) + (H + 1)
    total = 0
    for m, d in spec.modalities.items():
        total += d * H + H + spec.max_len[m] * H + layers[m] * layer + pool
    C = spec.num_labels
    return total + len(spec.modalities) * H * C + C + (C * C if label_similarity else 0)


@pytest.mark.parametrize("label_similarity", [False, True])
def test_shapes_and_parameter_count_at_the_authors_sizes(label_similarity):
    spec = authors_spec()
    torch.manual_seed(0)
    model = create_model("univa", spec, {"label_similarity": label_similarity})
    n = sum(p.numel() for p in model.parameters())
    assert n == expected_parameters(spec, {"text": 7, "audio": 3, "visual": 5}, label_similarity=label_similarity)
    batch = make_batch(b=3, t=50, spec=spec)
    out = model(batch)
    assert out.probs.shape == (3, 6) and out.features["pooled"].shape == (3, 3, 768)
    torch.testing.assert_close(out.probs.sum(1), torch.ones(3))  # a softmax over labels
    assert model.loss(out, batch)["total"].shape == ()
    # the release deep-copies one layer: every layer of an encoder starts identical
    enc = model.encoders["text"].layers
    assert torch.equal(enc[0].ffn_in.weight, enc[6].ffn_in.weight)


def tiny(spec=SPEC, **params):
    torch.manual_seed(0)
    base = {"hidden_size": 16, "num_heads": 2, "intermediate_size": 32, "dropout": 0.0,
            "fc_dropout": 0.0, "final_dropout": 0.0, "layers": {"text": 1, "visual": 1, "audio": 1}}
    return create_model("univa", spec, {**base, **params})


def test_batch_of_one_runs():
    """The release's pooling squeezes without a dimension and fails at batch 1 (A6.9)."""
    model = tiny()
    batch = make_batch(b=1)
    out = model(batch)
    assert out.probs.shape == (1, SPEC.num_labels) and torch.isfinite(model.loss(out, batch)["total"])


def test_loss_is_the_spec_combination_of_its_terms():
    model = tiny(label_similarity=True, alpha=0.45)
    batch = make_batch()
    out = model(batch)
    terms = model.loss(out, batch)
    s = out.logits.log_softmax(-1)
    kl = 1000 * multilabel_kl(s, batch.labels)
    reg = label_similarity_regulariser(s, model.label_similarity)
    va = normalise_va(labels_to_va(batch.labels, va_points(SPEC.labels)))
    f = out.features["pooled"]
    sc = (3 * va_supcon_loss(f[:, 0], va, 0.4, 0.1) + va_supcon_loss(f[:, 1], va, 0.4, 0.1)
          + va_supcon_loss(f[:, 2], va, 0.4, 0.1)) / 3
    torch.testing.assert_close(terms["total"], 0.55 * (kl + reg) + 0.45 * sc)
    # the prior is trained with the model (the release registers it as a parameter)
    terms["total"].backward()
    assert model.label_similarity.grad is not None and model.label_similarity.grad.abs().sum() > 0


def test_labels_to_va_means_positive_points_and_neutral_for_none():
    pts = va_points(MOSEI)
    y = torch.tensor([[1., 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    torch.testing.assert_close(labels_to_va(y, pts), torch.tensor([[(1.0 + .167) / 2, (.735 + .865) / 2],
                                                                    [.5, .5]]))


def with_va(batch: Batch, va: dict[str, torch.Tensor]) -> Batch:
    return dataclasses.replace(batch, extras={f"va_{m}": v for m, v in va.items()})


def test_store_va_extras_are_used_per_modality():
    spec = dataclasses.replace(SPEC, extras={f"va_{m}": 2 for m in SPEC.modalities})
    model = tiny(spec)
    assert model.va_keys == ["va_text", "va_visual", "va_audio"]
    batch = make_batch()
    g = torch.Generator().manual_seed(3)
    va = {m: torch.rand(32, 2, generator=g) for m in SPEC.modalities}
    out = model(with_va(batch, va))
    got = model.loss(out, with_va(batch, va))["supcon"]
    f = out.features["pooled"]
    expected = sum(w * va_supcon_loss(f[:, i], normalise_va(va[m]), 0.4, 0.1)
                   for i, (m, w) in enumerate(zip(SPEC.modalities, (3, 1, 1)))) / 3
    torch.testing.assert_close(got, expected)
    # forcing the label-derived substitute ignores the extras
    assert tiny(spec, va_source="labels").va_keys is None


def test_va_source_store_without_extras_names_them_and_the_fix():
    with pytest.raises(ConfigError, match=r"va_text.*va_source=labels"):
        tiny(va_source="store")
    bad = dataclasses.replace(SPEC, extras={f"va_{m}": 3 for m in SPEC.modalities})
    with pytest.raises(ConfigError, match="va_text has 3 columns"):
        tiny(bad)


def test_unknown_label_names_it_unless_a_table_is_passed():
    spec = dataclasses.replace(SPEC, labels=("happy", "boredom", "Awe"))
    with pytest.raises(ConfigError, match=r"'boredom', 'Awe'.*model\.va_table"):
        tiny(spec)
    model = tiny(spec, va_table={"boredom": (0.3, 0.1), "awe": (0.8, 0.7)}, label_similarity=True)
    assert model.va_table[1].tolist() == pytest.approx([0.3, 0.1])
    # without the regulariser and with store VA, no table is needed
    store = dataclasses.replace(spec, extras={f"va_{m}": 2 for m in SPEC.modalities})
    assert tiny(store).va_keys is not None


def test_missing_modality_leaves_its_contrastive_term():
    model = tiny()
    batch = make_batch(missing="visual")
    out = model(batch)
    assert out.features["pooled"][:, 1].abs().sum() == 0
    terms = model.loss(out, batch)
    assert torch.isfinite(terms["total"])


def test_cli_store_labels_without_va_points_exit_2(capsys):
    err = mmer_fails(capsys, "train", "-m", "univa", "--dry-run", "--set", "data.synthetic.labels=[joy, gloom]",
                     "--set", "data.synthetic.samples=60")
    assert_mentions(err, "'joy', 'gloom'", r"model\.va_table")


def test_a_tiny_run_beats_every_constant_prediction(tmp_path):
    """The packaged recipe (the authors' loop), narrowed, learns: 5 points of micro-F1 above
    every constant label set, F1 > 0 on >= 3 labels (issue 22: no seed at a constant). At the
    release's threshold 0.18: the recipe's searched one is chosen on 75 validation samples here,
    too few to pick it well (0.15: test micro-F1 0.536 against 0.617 at 0.18)."""
    from helpers import EASY_DATA, assert_beats_every_constant

    from mmerkit import api

    result = api.train("univa", None, out=tmp_path, seeds=[1], overrides=[
        *EASY_DATA, "model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=64",
        "model.layers={text: 1, visual: 1, audio: 1}", "train.epochs=4", "optim.lr=1e-3",
        "train.threshold=default", "train.progress=false"])[0]
    assert_beats_every_constant(result.test_metrics)
