"""Which student layer and token is compared with which teacher layer and token (a helper, not a method).

Layers: the study ("An Empirical Study of Knowledge Distillation for Code Understanding Tasks", Wang et
al., arXiv 2508.15423, STUDY.md §4.3-4.4) matches student layer j (1..L_s) with teacher layer j·12/L_s,
PKD's "skip" scheme (Sun et al., EMNLP 2019), and requires L_s to divide 12. :func:`layer_map`
generalises this to any counts, and methods take an explicit map as the option ``layers="3,6,9,12"``.

Tokens: student and teacher may use different tokenizers, so their sequences can differ in length. As in
the study (its CKD; ``--align position``), tokens are matched by position: both sides are cut to the
shorter length and a position counts as real only when it is real on both sides. Matching tokens by
character offsets would be more faithful to the code, but it is not done here.

The registry imports every module of this folder; this one registers nothing.
"""

from collections.abc import Sequence

import torch
from torch import Tensor

from codekd.data.text import shown
from codekd.models.adapters import ModelShape, Outputs


def layer_map(student_layers: int, teacher_layers: int, explicit: Sequence[int] | None = None) -> list[int]:
    """Teacher layer (1-based) for each student layer 1..``student_layers``.

    Uniform map: student layer j ↔ teacher layer round(j·L_t/L_s), with halves rounded up (so 4 student
    layers over a 6-layer teacher give 1.5, 3, 4.5, 6 → [2, 3, 5, 6]), and at least 1 (a student deeper
    than its teacher shares teacher layers). When L_s divides L_t this is the study's j·L_t/L_s; the last
    student layer always meets the last teacher layer. ``explicit`` replaces the map; it must have one
    teacher layer in 1..L_t per student layer.
    """
    if explicit is None:
        return [max(1, (2 * j * teacher_layers + student_layers) // (2 * student_layers))
                for j in range(1, student_layers + 1)]
    explicit = list(explicit)
    if len(explicit) != student_layers:
        raise ValueError(
            f"layers={explicit}: need one teacher layer per student layer ({student_layers}), "
            f"got {len(explicit)}"
        )
    if not all(1 <= m <= teacher_layers for m in explicit):
        raise ValueError(f"layers={explicit}: teacher layers are numbered 1..{teacher_layers}")
    return explicit


def parse_layers(text: str) -> list[int] | None:
    """The ``layers`` option ("3,6,9,12") as a list; "" means the uniform map (None)."""
    if not text.strip():
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(
            f"layers={shown(text)}: expected comma-separated teacher layer numbers, e.g. '3,6,9,12'"
        ) from None


def _index(shape: ModelShape, layer: int) -> int:
    """Position of 1-based ``layer`` in a model's per-layer ``Outputs`` tuples.

    Transformers put the embedding output at index 0, so layer j is index j; the BiGRU has no embedding
    entry, so GRU layer j is index j − 1.
    """
    return layer if shape.kind == "transformer" else layer - 1


def matched_indices(
    student: ModelShape, teacher: ModelShape, layers: str, embeddings: bool
) -> tuple[list[int], list[int]]:
    """Indices into the student's and the teacher's per-layer ``Outputs`` tuples of matched layers.

    One pair per student layer 1..L_s, teacher layers from :func:`layer_map` (``layers`` as the method
    option). With ``embeddings``, the two embedding outputs form a first pair when both models have one
    (transformers do, the BiGRU does not), as the study's CKD does.
    """
    mapped = layer_map(student.num_layers, teacher.num_layers, parse_layers(layers))
    student_idx = [_index(student, j) for j in range(1, student.num_layers + 1)]
    teacher_idx = [_index(teacher, m) for m in mapped]
    if embeddings and student.kind == teacher.kind == "transformer":
        return [0, *student_idx], [0, *teacher_idx]
    return student_idx, teacher_idx


def common_positions(student: Outputs, teacher: Outputs) -> tuple[int, Tensor]:
    """Shared length n = min(N_s, N_t) and the (B, n) mask of positions real on both sides."""
    n = min(student.mask.shape[1], teacher.mask.shape[1])
    return n, student.mask[:, :n].bool() & teacher.mask[:, :n].bool()


def stack_layers(states: Sequence[Tensor], indices: Sequence[int], n: int) -> Tensor:
    """(B, L, n, H): the per-layer (B, N, H) ``states`` at ``indices``, cut to the first n positions."""
    return torch.stack([states[i][:, :n] for i in indices], dim=1)
