"""Training diagnostics: settings in which a distillation run cannot work as the user expects, each
reported as one console line and one record in the run's `metrics.json` (`diagnostics`).

- DIST's inter-class term on a binary task: the centred 2-class rows are [d, −d], so the Pearson
  correlation is ±1 and the term has no gradient (Huang et al., NeurIPS 2022, computed per example).
- DKD's non-target term (NCKD) on a binary task: one non-target class, whose renormalised
  distribution is always [1], so NCKD is zero (Zhao et al., CVPR 2022).
- DIST's intra-class term with one example per process batch: a correlation across one example is
  constant.
- Uninformative soft targets: the mean entropy of softmax(z_t/T) over the training set is ≥ 95 % of
  log C, i.e. the targets are close to uniform and say little about the classes; the record names
  the temperature below which they would not be.
- Collapse: after an epoch the student predicts one class for ≥ 95 % of the validation split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

ENTROPY_SHARE = 0.95
COLLAPSE_SHARE = 0.95


def _record(name: str, message: str, **details: Any) -> dict[str, Any]:
    return {"name": name, "message": message, **details}


def method_diagnostics(method: str, hparams: dict[str, Any], n_classes: int, micro_batch: int) -> list[dict[str, Any]]:
    """What a method's own terms cannot do on this task and batch size (see the module doc)."""
    out = []
    if method == "dist" and n_classes == 2 and hparams.get("beta", 0) > 0:
        out.append(_record("dist_binary", "DIST on a binary task: the inter-class term (beta) is a constant ±1 "
                           "and gives no gradient; only the intra-class term (gamma) trains the student"))
    if method == "dkd" and n_classes == 2 and hparams.get("beta", 0) > 0:
        out.append(_record("dkd_binary", "DKD on a binary task: NCKD (beta) is zero with one non-target class; "
                           "only TCKD and the label term train the student"))
    if method == "dist" and micro_batch == 1 and hparams.get("gamma", 0) > 0:
        out.append(_record("dist_one_example", "DIST with one example per process batch: the intra-class term "
                           "(gamma) is constant; use a larger --batch-size or fewer processes / --grad-accum"))
    return out


def mean_entropy(logits: Tensor, temperature: float) -> float:
    """Mean over rows of the entropy (nats) of softmax(logits / temperature)."""
    logp = torch.log_softmax(logits.double() / temperature, dim=-1)
    return float(-(logp.exp() * logp).sum(-1).mean())


def soft_target_diagnostic(logits: Tensor, temperature: float) -> dict[str, Any] | None:
    """A record when the teacher's softened targets are nearly uniform (mean entropy ≥ 95 % of log C),
    naming the temperature at which the mean entropy would be just below that share (bisection: the
    entropy of softmax(z/T) does not decrease as T grows); None otherwise."""
    n_classes = logits.shape[-1]
    limit = ENTROPY_SHARE * math.log(n_classes)
    h = mean_entropy(logits, temperature)
    if h < limit:
        return None
    lo, hi = 1e-3, temperature
    if mean_entropy(logits, lo) >= limit:
        return _record("soft_targets_uniform", f"the teacher's soft targets at T={temperature:g} are nearly uniform "
                       f"(mean entropy {h:.3f} ≥ {ENTROPY_SHARE:.0%} of log {n_classes} = {limit:.3f}) at every "
                       "temperature: the teacher itself is close to uniform", temperature=temperature,
                       mean_entropy=h, limit=limit, informative_below=None)
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_entropy(logits, mid) < limit else (lo, mid)
    return _record("soft_targets_uniform", f"the teacher's soft targets at T={temperature:g} carry almost no "
                   f"information (mean entropy {h:.3f} ≥ {ENTROPY_SHARE:.0%} of log {n_classes} = {limit:.3f}); "
                   f"they would not below T={lo:.2f}", temperature=temperature, mean_entropy=h, limit=limit,
                   informative_below=round(lo, 4))


def majority_share(probs: Any) -> tuple[int, float]:
    """The most predicted class and the share of examples predicted as it."""
    pred = torch.as_tensor(probs).argmax(-1)
    counts = torch.bincount(pred)
    return int(counts.argmax()), float(counts.max()) / max(len(pred), 1)


def collapse_message(label: str, share: float, epoch: int) -> str:
    """The console line's words for a student that predicts one class for `share` of the validation split."""
    return f"the student predicts {label} for {share:.0%} of the validation split after epoch {epoch}"


def collapse_diagnostic(history: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[str, Any] | None:
    """A record when, after some epoch, one class took ≥ 95 % of the validation predictions (the
    `majority` entries the training loop writes into each epoch's history)."""
    epochs = [h for h in history if h.get("majority", {}).get("share", 0) >= COLLAPSE_SHARE]
    if not epochs:
        return None
    first = epochs[0]["majority"]
    line = collapse_message(labels[first["class"]], first["share"], epochs[0]["epoch"])
    numbers = [h["epoch"] for h in epochs]
    return _record("collapsed", f"{line} (collapsed in epochs {', '.join(map(str, numbers))})", epochs=numbers,
                   label=labels[first["class"]], share=first["share"])
