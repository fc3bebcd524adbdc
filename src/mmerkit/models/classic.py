"""Classic multi-label baselines on early-fused, pooled features: BR, CC and LP (scikit-learn).

These are the three "classic" rows of the CARAT and TAILOR tables:

- BR, binary relevance (Boutell et al., "Learning multi-label scene classification", Pattern
  Recognition 2004): one independent binary classifier per label.
- CC, classifier chains (Read et al., "Classifier Chains for Multi-label Classification",
  ECML PKDD 2009 / Machine Learning 2011): binary classifiers in a chain; the classifier at
  chain position k also sees the labels of positions 0..k-1 (the true ones when fitting, its
  predecessors' 0/1 predictions when predicting).
- LP, label powerset (Tsoumakas & Katakis, "Multi-Label Classification: An Overview", IJDWM
  2007): every distinct label set of the training split is one class of a multi-class
  classifier.

Input (the same for all three). For every modality m with valid steps t < len_m:
    x_m = [ mean_t h_m,t ; max_t h_m,t ]        (2 D_m),   x_m = 0 when the modality is missing
    x   = [ x_1 ; ... ; x_M ]                   (early fusion: concatenation, D = 2 sum D_m)
    z   = (x - mu) / sigma                      mu, sigma of the TRAIN split (`standardize`)
Base estimator: scikit-learn's LogisticRegression (L2, lbfgs, `C`, `max_iter`).
    BR:  p_l = sigmoid(w_l . z + b_l)
    CC:  s_k = w_k . [z ; yhat_o(0) .. yhat_o(k-1)] + b_k,  p_o(k) = sigmoid(s_k),  yhat = [s_k > 0]
         (sklearn.multioutput.ClassifierChain; `order`: "random" = a permutation drawn with the
         run seed, as ClassifierChain(order="random", random_state=seed); "labels" = label order)
    LP:  q = softmax(W z + b) over the K train label sets S_k (multinomial LogisticRegression),
         p_l = sum_k q_k [l in S_k]             (the marginal of label l)

How they fit into the toolkit. Each is an `MMERModel` (`closed_form = True`) whose forward pools
a Batch and evaluates the fitted classifier in torch, so data loading, padding, masks, missing
modalities, metrics, thresholds, runs, `mmer eval`, `mmer predict` and the plots are the same
code as for the neural models. The engine calls the contract's `fit_closed_form(data)` instead
of running epochs: the model reads the pooled features of the whole train and valid splits
through the engine's loader (`data.read`), chooses C on validation and fits; the engine then
validates, picks the threshold on validation and tests exactly as for a neural model.

Choosing C. With `C: null` (the default) every C of `C_grid` is fitted on train and scored on
validation by `train.select_metric` (micro-F1) at the model's threshold; the best wins (ties: the
smaller C, i.e. the stronger regularisation). The chosen C is logged in metrics.csv (column "fit/C")
and printed. A number fixes C (e.g. `--set model.C=1.0`, scikit-learn's default).

Decisions:
- The fitted parameters live in float64 buffers (coefficients, intercepts, mu/sigma, the chain
  order, LP's label sets), so an export is safetensors + config.json like every model, never a
  pickle. The forward runs in float64 (autocast off), so the float32 probabilities it returns
  equal sklearn's predict_proba to float32 rounding.
- LP's number of classes K is decided by the data; `adapt_to_state` resizes those buffers
  before an export is loaded into a fresh model.
- Standardising (on by default) is not part of the methods; without it lbfgs converges slowly
  on raw features of very different scales (GloVe vs COVAREP), and it does not change what the
  classifiers can represent.
- A label (BR, CC) with a single value in train cannot fit a logistic regression: it predicts
  its smoothed train rate (count + 0.5) / (n + 1), which is ~0 or ~1 and never exactly either.
  With K = 2 label sets LP is a binary regression (what sklearn fits), written as a softmax
  over [0, s]; with K = 1 it predicts that one set.
- `modality_label_scores` (B, M, L), for the modality heatmap: the share of label l's logit
  that comes from modality m's block of z (BR; CC without the chain inputs); for LP, the
  gradient x input of logit(p_l) per block (its linear attribution, since LP's marginals are not
  linear in z). `features["pooled"]` is z.
- There are no epochs, no optimiser and no resumable checkpoint: `train.epochs`,
  `train.batch_size` and the optim section are ignored, metrics.csv has one epoch; the run has
  config.yaml, env.json, metrics.csv, valid/test_metrics.json and export/ (no best/last.ckpt).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from mmerkit.config import ModelConfig
from mmerkit.data.batch import Batch
from mmerkit.data.store import DataSpec
from mmerkit.models.base import MMERModel, ModelOutput, SplitData, register_model
from mmerkit.models.baselines import masked_mean_max


class ClassicConfig(ModelConfig):
    C: float | None = Field(None, gt=0)  # inverse L2 strength; None: chosen on validation from C_grid
    # BR, CC and LP chose C = 0.01 on the embedded data (seed 1): the grid has a value on each side
    C_grid: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0)
    max_iter: int = Field(1000, ge=1)
    standardize: bool = True  # z-score the pooled features with train statistics
    threshold: float = 0.5


class BRConfig(ClassicConfig):
    pass


class CCConfig(ClassicConfig):
    order: Literal["random", "labels"] = "random"  # "random": drawn with the run seed


class LPConfig(ClassicConfig):
    pass


@functools.cache
def _logreg_class() -> type:
    """LogisticRegression that also fits a label with one value in train (lazy sklearn import)."""
    from sklearn.linear_model import LogisticRegression

    class ConstantSafeLogisticRegression(LogisticRegression):
        def fit(self, X, y, sample_weight=None):
            y = np.asarray(y).astype(np.int64)
            if np.unique(y).size > 1:
                return super().fit(X, y, sample_weight)
            rate = (y.sum() + 0.5) / (len(y) + 1.0)
            self.classes_ = np.array([0, 1])
            self.coef_ = np.zeros((1, np.shape(X)[1]))
            self.intercept_ = np.array([np.log(rate / (1.0 - rate))])
            self.n_features_in_ = np.shape(X)[1]
            self.n_iter_ = np.zeros(1, dtype=np.int32)
            return self

    return ConstantSafeLogisticRegression


def logistic_regression(C: float, max_iter: int):
    """The base estimator of BR, CC and LP."""
    return _logreg_class()(C=C, max_iter=max_iter)


class ClassicModel(MMERModel):
    """Pooled early-fused features -> a fitted scikit-learn model, evaluated in torch."""

    closed_form: ClassVar[bool] = True
    data_sized: ClassVar[tuple[str, ...]] = ()  # buffers whose first dim the fitted data decides
    test_params: ClassVar[dict[str, Any]] = {"C": 1.0, "max_iter": 500}
    # no epochs, no optimiser: C (null = chosen on validation from C_grid) and the scaling
    search_space: ClassVar[dict[str, Any]] = {
        "model.C": {"type": "categorical", "choices": [None, 0.001, 0.01, 0.1, 1.0, 10.0]},
        "model.standardize": {"type": "categorical", "choices": [True, False]}}

    def __init__(self, config: ClassicConfig, spec: DataSpec):
        super().__init__(config, spec)
        self.blocks: list[slice] = []  # the columns of x (and z) that belong to each modality
        start = 0
        for m in spec.modality_names:
            self.blocks.append(slice(start, start + 2 * spec.modalities[m]))
            start += 2 * spec.modalities[m]
        self.num_features = start
        f64 = torch.float64
        self.register_buffer("mean", torch.zeros(start, dtype=f64))
        self.register_buffer("scale", torch.ones(start, dtype=f64))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    # -- input
    def pooled_features(self, batch: Batch) -> Tensor:
        """(B, D) float32: mean and max over valid steps per modality, concatenated (0 if missing)."""
        parts = [masked_mean_max(batch.inputs[m].float(), batch.masks[m]) for m in self.spec.modality_names]
        return torch.cat(parts, -1)

    def _blockwise(self, z: Tensor, w: Tensor) -> Tensor:
        """(B, M, L): sum over modality m's columns of z * w; w is (L, D) or (B, L, D)."""
        if w.ndim == 2:
            return torch.stack([z[:, s] @ w[:, s].T for s in self.blocks], 1)
        return torch.stack([torch.einsum("bd,bld->bl", z[:, s], w[:, :, s]) for s in self.blocks], 1)

    # -- fitting
    def fit_closed_form(self, data: SplitData) -> dict[str, float]:
        """The contract's fitting hook: pooled features of train (and valid, to choose C)."""
        x, y = data.read("train", self.pooled_features), data.labels("train")
        if self.config.C is not None:
            self.fit_arrays(x, y, seed=data.seed)
            return {"C": float(self.config.C)}
        return self.fit_choosing_C(x, y, data.read("valid", self.pooled_features), data.labels("valid"),
                                   seed=data.seed, metric=data.select_metric)

    def fit_choosing_C(self, x: np.ndarray, y: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray,
                       seed: int = 0, metric: str = "micro_f1") -> dict[str, float]:
        """Fit once per C of `C_grid` and keep the fit with the best validation `metric`
        (ties: the smaller C). Returns {"C": chosen, "valid_<metric>": its score}."""
        from mmerkit.metrics import HIGHER_IS_BETTER, binarize, compute_metrics

        sign = 1.0 if HIGHER_IS_BETTER.get(metric, True) else -1.0
        best: tuple[float, float, dict] | None = None
        for C in sorted(self.config.C_grid):
            self.fit_arrays(x, y, seed=seed, C=C)
            with torch.no_grad():
                z = (torch.as_tensor(np.asarray(x_valid), dtype=torch.float64, device=self.mean.device)
                     - self.mean) / self.scale
                probs = self._predict(z)[0].float().cpu().numpy()
            score = compute_metrics(y_valid, binarize(probs, self.threshold))[metric]
            if best is None or sign * score > sign * best[1]:
                best = (C, score, {k: v.clone() for k, v in self.state_dict().items()})
        C, score, state = best
        self.load_state_dict(state)  # LP's K label sets come from train: the same for every C
        return {"C": float(C), f"valid_{metric}": float(score)}

    def fit_arrays(self, x: np.ndarray, y: np.ndarray, seed: int = 0, C: float | None = None) -> ClassicModel:
        """Fit on pooled features `x` (N, D) (see `pooled_features`) and multi-hot `y` (N, L)
        with one C: `C`, else `config.C`, else 1.0 (scikit-learn's default; choosing C needs
        validation data: `fit_choosing_C`).

        Example:
            >>> model.fit_arrays(model.pooled_features(batch), batch.labels)   # doctest: +SKIP
        """
        self._C = float(C if C is not None else self.config.C if self.config.C is not None else 1.0)
        x = np.asarray(x.cpu() if isinstance(x, Tensor) else x, dtype=np.float64)
        y = (np.asarray(y.cpu() if isinstance(y, Tensor) else y) > 0.5).astype(np.int64)
        if x.ndim != 2 or x.shape[1] != self.num_features or y.shape != (len(x), self.spec.num_labels):
            raise ValueError(f"{self.name}.fit_arrays: expected x (N, {self.num_features}) and y "
                             f"(N, {self.spec.num_labels}), got {x.shape} and {y.shape}")
        if len(x) == 0:
            raise ValueError(f"{self.name}.fit_arrays: no training samples")
        mean, scale = np.zeros(x.shape[1]), np.ones(x.shape[1])
        if self.config.standardize:
            mean, scale = x.mean(0), x.std(0)
            scale[scale < 1e-12] = 1.0  # a constant column stays constant (0) after centring
        self.mean.copy_(torch.from_numpy(mean))
        self.scale.copy_(torch.from_numpy(scale))
        self._fit((x - mean) / scale, y, seed)
        self.fitted.fill_(True)
        return self

    def _fit(self, z: np.ndarray, y: np.ndarray, seed: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _set(self, name: str, value: np.ndarray) -> None:
        setattr(self, name, torch.as_tensor(np.ascontiguousarray(value), dtype=getattr(self, name).dtype,
                                            device=self.mean.device))

    def adapt_to_state(self, state: dict[str, Tensor]) -> None:
        """Resize the data-sized buffers (LP's label sets) to a saved state before it is loaded."""
        for name in self.data_sized:
            own, saved = getattr(self, name), state.get(name)
            if saved is not None and saved.shape[1:] == own.shape[1:] and saved.shape != own.shape:
                setattr(self, name, own.new_zeros(saved.shape))

    # -- prediction
    def forward(self, batch: Batch) -> ModelOutput:
        if not bool(self.fitted):
            raise RuntimeError(f"{self.name} is not fitted: it is fitted in closed form by `mmer train` "
                               "(or model.fit_arrays(X, Y)), not by gradient steps")
        with torch.autocast(self.mean.device.type, enabled=False):
            z = (self.pooled_features(batch).double() - self.mean) / self.scale
            probs, logits, scores, aux = self._predict(z)
        return ModelOutput(logits=logits.float(), probs=probs.float(), features={"pooled": z.float()},
                           modality_label_scores=scores.float(), aux=aux)

    def _predict(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, dict]:  # pragma: no cover
        raise NotImplementedError


# ---------------------------------------------------------------------------- BR


@register_model("br", paper="Binary relevance: Learning multi-label scene classification (Boutell "
                "et al., Pattern Recognition 2004)", year=2004, config=BRConfig)
class BinaryRelevance(ClassicModel):
    def __init__(self, config: BRConfig, spec: DataSpec):
        super().__init__(config, spec)
        L, D = spec.num_labels, self.num_features
        self.register_buffer("coef", torch.zeros(L, D, dtype=torch.float64))
        self.register_buffer("intercept", torch.zeros(L, dtype=torch.float64))

    def _fit(self, z: np.ndarray, y: np.ndarray, seed: int) -> None:
        coef, intercept = np.zeros((y.shape[1], z.shape[1])), np.zeros(y.shape[1])
        for j in range(y.shape[1]):
            clf = logistic_regression(self._C, self.config.max_iter).fit(z, y[:, j])
            coef[j], intercept[j] = clf.coef_[0], clf.intercept_[0]
        self._set("coef", coef)
        self._set("intercept", intercept)

    def _predict(self, z: Tensor):
        logits = z @ self.coef.T + self.intercept
        return torch.sigmoid(logits), logits, self._blockwise(z, self.coef), {}


# ---------------------------------------------------------------------------- CC


@register_model("cc", paper="Classifier chains for multi-label classification (Read et al., ECML "
                "PKDD 2009; Machine Learning 2011)", year=2009, config=CCConfig)
class ClassifierChainModel(ClassicModel):
    def __init__(self, config: CCConfig, spec: DataSpec):
        super().__init__(config, spec)
        L, D = spec.num_labels, self.num_features
        self.register_buffer("order", torch.arange(L, dtype=torch.int64))  # label at each position
        # row k = chain position k: D feature weights, then weights of positions 0..k-1 (rest 0)
        self.register_buffer("coef", torch.zeros(L, D + L - 1, dtype=torch.float64))
        self.register_buffer("intercept", torch.zeros(L, dtype=torch.float64))

    def _fit(self, z: np.ndarray, y: np.ndarray, seed: int) -> None:
        from sklearn.multioutput import ClassifierChain

        order = "random" if self.config.order == "random" else None
        chain = ClassifierChain(logistic_regression(self._C, self.config.max_iter),
                                order=order, random_state=seed).fit(z, y)
        L, D = y.shape[1], z.shape[1]
        coef, intercept = np.zeros((L, D + L - 1)), np.zeros(L)
        for k, est in enumerate(chain.estimators_):
            coef[k, : D + k], intercept[k] = est.coef_[0], est.intercept_[0]
        self._set("order", np.asarray(chain.order_, dtype=np.int64))
        self._set("coef", coef)
        self._set("intercept", intercept)

    def _predict(self, z: Tensor):
        D, L = self.num_features, self.spec.num_labels
        logits = z.new_zeros(z.shape[0], L)
        prev = z.new_zeros(z.shape[0], max(L - 1, 0))  # 0/1 predictions of earlier positions
        for k in range(L):
            s = z @ self.coef[k, :D] + prev[:, :k] @ self.coef[k, D:D + k] + self.intercept[k]
            logits[:, self.order[k]] = s
            if k < L - 1:
                prev[:, k] = (s > 0).to(z.dtype)  # LogisticRegression.predict: decision > 0
        feature_w = torch.empty_like(self.coef[:, :D])
        feature_w[self.order] = self.coef[:, :D]  # back to label order
        return torch.sigmoid(logits), logits, self._blockwise(z, feature_w), {}


# ---------------------------------------------------------------------------- LP


@register_model("lp", paper="Label powerset: Multi-label classification: an overview (Tsoumakas & "
                "Katakis, IJDWM 2007)", year=2007, config=LPConfig)
class LabelPowerset(ClassicModel):
    data_sized = ("label_sets", "coef", "intercept")

    def __init__(self, config: LPConfig, spec: DataSpec):
        super().__init__(config, spec)
        L, D = spec.num_labels, self.num_features
        # K label sets (K = 1 until fitted), one row of multi-hot labels each
        self.register_buffer("label_sets", torch.zeros(1, L, dtype=torch.float64))
        self.register_buffer("coef", torch.zeros(1, D, dtype=torch.float64))
        self.register_buffer("intercept", torch.zeros(1, dtype=torch.float64))

    def _fit(self, z: np.ndarray, y: np.ndarray, seed: int) -> None:
        sets, codes = np.unique(y, axis=0, return_inverse=True)
        codes = codes.reshape(-1)
        K = len(sets)
        coef, intercept = np.zeros((K, z.shape[1])), np.zeros(K)
        if K == 2:  # sklearn fits a binary model: softmax([0, s]) = [1 - sigmoid(s), sigmoid(s)]
            clf = logistic_regression(self._C, self.config.max_iter).fit(z, codes)
            coef[1], intercept[1] = clf.coef_[0], clf.intercept_[0]
        elif K > 2:
            clf = logistic_regression(self._C, self.config.max_iter).fit(z, codes)
            coef, intercept = clf.coef_, clf.intercept_
        self._set("label_sets", sets.astype(np.float64))
        self._set("coef", coef)
        self._set("intercept", intercept)

    def _predict(self, z: Tensor):
        set_probs = torch.softmax(z @ self.coef.T + self.intercept, -1)  # (B, K)
        probs = (set_probs @ self.label_sets).clamp(0.0, 1.0)
        return probs, torch.logit(probs, eps=1e-7), self._attribution(z, set_probs), {"set_probs": set_probs}

    def _attribution(self, z: Tensor, q: Tensor) -> Tensor:
        """Gradient x input of logit(p_l) per modality block: d logit(p_l) / dz is the mean
        coefficient of the sets containing l minus that of the others, each weighted by q."""
        inside = q[:, :, None] * self.label_sets  # (B, K, L)
        outside = q[:, :, None] * (1.0 - self.label_sets)
        tiny = torch.finfo(z.dtype).tiny
        w = inside / inside.sum(1, keepdim=True).clamp_min(tiny) - outside / outside.sum(1, keepdim=True).clamp_min(tiny)
        grad = torch.einsum("bkl,kd->bld", w, self.coef)  # (B, L, D)
        return self._blockwise(z, grad)
