"""The eight student models of Wang et al., "An Empirical Study of Knowledge Distillation for Code
Understanding Tasks" (arXiv 2508.15423), §3 of STUDY.md, built from scratch with random weights.

Each size comes with its own BPE vocabulary (50000 → 124M, 20000 → 30M, 5000 → 7M, 2000 → 1.5M,
1000 → 0.6M). The BiGRU shapes are the study's own (they reproduce its 1.50M / 7.10M / 30.5M exactly).
The study did not release its RoBERTa student configs, so the smaller RoBERTa shapes below are ours: found
by searching hidden size (multiples of 8), layer counts dividing 12 (PKD and CKD map student layer i to
teacher layer i·12/L) and FFN = 4 × hidden, for a count within ±10 % of the name; among those we kept
deeper-ish shapes and RoBERTa's 64-wide heads where the width allows. ``roberta-124m`` is roberta-base.

Parameters for 2 labels, 514 positions, 1 token type (``preset_table()`` recomputes this table):

| name | kind | vocab | layers | hidden | heads | FFN | params |
|---|---|---|---|---|---|---|---|
| roberta-124m | roberta | 50000 | 12 | 768 | 12 | 3072 | 124,443,650 |
| roberta-30m | roberta | 20000 | 6 | 512 | 8 | 2048 | 29,682,690 |
| roberta-7m | roberta | 5000 | 4 | 320 | 5 | 1280 | 6,800,642 |
| roberta-1.5m | roberta | 2000 | 4 | 152 | 4 | 608 | 1,523,042 |
| roberta-0.6m | roberta | 1000 | 4 | 96 | 3 | 384 | 602,498 |
| gru-30m | gru | 20000 | 6 | 448 | - | - | 30,501,186 |
| gru-7m | gru | 5000 | 3 | 320 | - | - | 7,103,682 |
| gru-1.5m | gru | 2000 | 2 | 176 | - | - | 1,501,458 |
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from codekd.data.text import shown

if TYPE_CHECKING:  # torch and transformers are imported by the functions that build models
    import torch
    from transformers import PreTrainedModel

KINDS = ("roberta", "gru")


@dataclass(frozen=True)
class StudentSpec:
    """Shape of a student: ``hidden_size`` is the model width (per-direction GRU width for ``gru``).

    Validated on creation, so a bad shape fails here rather than deep inside model construction.
    """

    name: str  # preset name, or "custom"
    kind: str  # "roberta" | "gru"
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int = 0  # roberta only
    intermediate_size: int = 0  # roberta only
    dropout: float = 0.1  # hidden and attention dropout (RoBERTa's and the study's 0.1); 0 makes training deterministic
    attention_dropout: float | None = None  # roberta only: on the attention probabilities; None is `dropout`

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {shown(self.kind)}")
        if self.vocab_size < 5:
            raise ValueError(f"vocab_size must cover the 5 special tokens (ids 0-4), got {self.vocab_size}")
        if self.hidden_size < 1 or self.num_layers < 1:
            raise ValueError(
                f"hidden_size and num_layers must be >= 1, got {self.hidden_size}, {self.num_layers}"
            )
        if self.kind == "gru" and (self.num_heads or self.intermediate_size):
            raise ValueError(
                "gru students have no attention heads or FFN: leave num_heads and intermediate_size 0"
            )
        if self.kind == "roberta" and (self.num_heads < 1 or self.intermediate_size < 1):
            raise ValueError(
                f"roberta students need num_heads and intermediate_size >= 1, "
                f"got {self.num_heads}, {self.intermediate_size}"
            )
        for field in ("dropout", "attention_dropout"):
            value = getattr(self, field)
            if value is None and field == "attention_dropout":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{field} must be in [0, 1), got {shown(value)}")
            object.__setattr__(self, field, float(value))  # YAML's 0 and 0.0 record alike
        if self.kind == "gru" and self.attention_dropout is not None:
            raise ValueError("gru students have no attention: leave attention_dropout unset")
        if self.kind == "roberta" and self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size})")

    def record(self) -> dict[str, Any]:
        """The spec's fields for a run's records, without an unset ``attention_dropout``: a run started before
        the field existed records the same student, so it still resumes."""
        fields = asdict(self)
        if self.attention_dropout is None:
            del fields["attention_dropout"]
        return fields


PRESETS: dict[str, StudentSpec] = {
    spec.name: spec
    for spec in (
        StudentSpec("roberta-124m", "roberta", 50000, 768, 12, 12, 3072),
        StudentSpec("roberta-30m", "roberta", 20000, 512, 6, 8, 2048),
        StudentSpec("roberta-7m", "roberta", 5000, 320, 4, 5, 1280),
        StudentSpec("roberta-1.5m", "roberta", 2000, 152, 4, 4, 608),
        StudentSpec("roberta-0.6m", "roberta", 1000, 96, 4, 3, 384),
        StudentSpec("gru-30m", "gru", 20000, 448, 6),
        StudentSpec("gru-7m", "gru", 5000, 320, 3),
        StudentSpec("gru-1.5m", "gru", 2000, 176, 2),
    )
}


def get_preset(name: str) -> StudentSpec:
    """Return the preset called ``name``; unknown names raise ValueError listing the presets."""
    if name not in PRESETS:
        raise ValueError(f"unknown student preset {shown(name)}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def custom_spec(
    kind: str,
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int = 0,
    intermediate_size: int = 0,
    dropout: float = 0.1,
    attention_dropout: float | None = None,
) -> StudentSpec:
    """A validated spec named "custom", for shapes outside the study (e.g. tiny test models)."""
    return StudentSpec("custom", kind, vocab_size, hidden_size, num_layers, num_heads, intermediate_size,
                       dropout, attention_dropout)


PRESET_OVERRIDES = ("dropout", "attention_dropout")  # what a `{preset: NAME, ...}` student may change


def student_spec(student: str | dict[str, Any] | StudentSpec, vocab_size: int) -> StudentSpec:
    """A preset name, a `StudentSpec`, a mapping of custom-shape fields (`{kind: gru, hidden_size: 128,
    num_layers: 2}`), or a preset with its dropout changed (`{preset: roberta-1.5m, attention_dropout: 0}`),
    sized to the student's actual vocabulary."""
    if isinstance(student, dict):
        fields = dict(student)
        try:
            if "preset" not in fields:
                return custom_spec(vocab_size=vocab_size, **fields)
            preset = get_preset(fields.pop("preset"))
            others = set(fields) - set(PRESET_OVERRIDES)
            if others:
                raise TypeError(f"a preset takes only {' and '.join(PRESET_OVERRIDES)}, not "
                                f"{', '.join(sorted(others))}")
            return replace(preset, vocab_size=vocab_size, **fields)
        except (TypeError, ValueError) as e:
            raise ValueError(f"--student {student}: {e}") from e
    spec = student if isinstance(student, StudentSpec) else get_preset(student)
    return replace(spec, vocab_size=vocab_size)


def build_student(
    spec: StudentSpec, num_labels: int, vocab_size: int | None = None, max_positions: int = 514
) -> PreTrainedModel:
    """Build a randomly initialised student classifier (seed torch before calling for repeatability).

    ``vocab_size`` overrides the spec's, because a BPE tokenizer trained for V tokens may end up smaller.
    Special-token ids follow the study's tokenizers: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2. RoBERTa students
    are plain ``RobertaForSequenceClassification`` (head on ``<s>``), as in the study.
    """
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from codekd.models.bigru import BiGRUConfig, BiGRUForSequenceClassification

    if vocab_size is not None:
        spec = replace(spec, vocab_size=vocab_size)
    common = dict(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        max_position_embeddings=max_positions,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        num_labels=num_labels,
        hidden_dropout_prob=spec.dropout,
    )
    if spec.kind == "gru":
        return BiGRUForSequenceClassification(BiGRUConfig(**common))
    config = RobertaConfig(
        num_attention_heads=spec.num_heads, intermediate_size=spec.intermediate_size,
        attention_probs_dropout_prob=spec.dropout if spec.attention_dropout is None else spec.attention_dropout,
        **common
    )
    return RobertaForSequenceClassification(config)


def count_parameters(model: torch.nn.Module) -> int:
    """Total number of parameters (shared ones counted once), the size the study names students by."""
    return sum(p.numel() for p in model.parameters())


def parameter_count(spec: StudentSpec, num_labels: int, vocab_size: int | None = None,
                    max_positions: int = 514) -> int:
    """The exact parameter count of ``build_student(spec, num_labels, vocab_size, max_positions)``, in closed
    form (no torch needed; tested equal to the built models' counts)."""
    h, vocab = spec.hidden_size, vocab_size or spec.vocab_size
    embeddings = (vocab + max_positions + 1) * h + 2 * h  # word, position, one token type; LayerNorm
    if spec.kind == "gru":  # per layer and direction 3H·(in + H + 2); the first layer reads H, the others 2H
        layers = sum(6 * h * ((h if i == 0 else 2 * h) + h + 2) for i in range(spec.num_layers))
        head = 2 * h * (2 * h + 1) + (2 * h + 1) * num_labels
        return embeddings + layers + head
    ffn = spec.intermediate_size  # q, k, v, output projections; FFN in and out; two LayerNorms
    layer = 4 * (h * h + h) + (h * ffn + ffn) + (ffn * h + h) + 4 * h
    head = h * (h + 1) + (h + 1) * num_labels
    return embeddings + spec.num_layers * layer + head


def preset_table(num_labels: int = 2) -> str:
    """Markdown table of every preset's shape and exact parameter count for ``num_labels`` labels."""
    lines = [
        "| name | kind | vocab | layers | hidden | heads | FFN | params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for spec in PRESETS.values():
        params = parameter_count(spec, num_labels)
        heads, ffn = (spec.num_heads, spec.intermediate_size) if spec.kind == "roberta" else ("-", "-")
        lines.append(
            f"| {spec.name} | {spec.kind} | {spec.vocab_size} | {spec.num_layers} | {spec.hidden_size} "
            f"| {heads} | {ffn} | {params:,} |"
        )
    return "\n".join(lines)
