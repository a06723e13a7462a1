"""Distillation methods (STUDY.md §4): layer maps, each method's loss against the `codekd.losses` functions
applied to hand-picked layers, gradient flow, the one-file registry, and a short real training run."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import RobertaConfig, RobertaForSequenceClassification

from codekd import losses
from codekd.methods import REGISTRY, Method, all_methods, get_method
from codekd.methods.layermap import layer_map
from codekd.models import build_student, custom_spec
from codekd.models.adapters import ModelShape, Outputs, prepare, run, run_frozen, shape_of

B, C = 3, 4
STUDENT = ModelShape("transformer", 3, 8, 8)
GRU = ModelShape("gru", 3, 4, 8)
TEACHER = ModelShape("transformer", 6, 12, 12)
# Real-token masks: the student has 5 positions, the teacher 6; on the shared 5, both are real only where
# COMMON is 1.
STUDENT_MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
TEACHER_MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
COMMON = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]).bool()
LABELS = torch.tensor([0, 3, 1])


# ---------------------------------------------------------------------------------------------- layer map


def test_uniform_layer_map() -> None:
    assert layer_map(6, 12) == [2, 4, 6, 8, 10, 12]
    assert layer_map(4, 12) == [3, 6, 9, 12]
    assert layer_map(4, 6) == [2, 3, 5, 6]  # 1.5, 3, 4.5, 6: halves round up
    assert layer_map(5, 12) == [2, 5, 7, 10, 12]  # 2.4, 4.8, 7.2, 9.6, 12
    assert layer_map(4, 2) == [1, 1, 2, 2]  # 0.5, 1, 1.5, 2
    assert layer_map(3, 1) == [1, 1, 1]  # 0.33 → 0 is lifted to 1


def test_explicit_layer_map() -> None:
    assert layer_map(3, 12, [1, 5, 12]) == [1, 5, 12]
    with pytest.raises(ValueError, match="one teacher layer per student layer"):
        layer_map(3, 12, [4, 8])
    with pytest.raises(ValueError, match="numbered 1..12"):
        layer_map(3, 12, [0, 6, 12])
    with pytest.raises(ValueError, match="numbered 1..12"):
        layer_map(2, 12, [6, 13])


def test_layers_option_is_parsed_and_checked() -> None:
    assert get_method("pkd")(STUDENT, TEACHER, layers="1,3,6").teacher_idx == [1, 3]
    with pytest.raises(ValueError, match="comma-separated"):
        get_method("ckd")(STUDENT, TEACHER, layers="1;3;6")
    with pytest.raises(ValueError, match="one teacher layer per student layer"):
        get_method("tinybert")(STUDENT, TEACHER, layers="3,6")


# ------------------------------------------------------------------------------------- synthetic outputs


def leaf(*shape: int) -> Tensor:
    return torch.randn(*shape).requires_grad_()


def attention(heads: int, mask: Tensor) -> Tensor:
    """(B, heads, N, N) random row distributions with no probability on pad keys, as a leaf."""
    scores = torch.randn(B, heads, mask.shape[1], mask.shape[1])
    return scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf")).softmax(-1).requires_grad_()


def outputs(shape: ModelShape, mask: Tensor, heads: int = 2) -> Outputs:
    """Random outputs of a model of `shape`: transformers carry the embedding output at index 0."""
    count = shape.num_layers + (shape.kind == "transformer")
    n = mask.shape[1]
    return Outputs(
        logits=leaf(B, C),
        mask=mask,
        hidden_states=tuple(leaf(B, n, shape.feature_size) for _ in range(count)),
        first_token=tuple(leaf(B, shape.feature_size) for _ in range(count)),
        attentions=tuple(attention(heads, mask) for _ in range(shape.num_layers))
        if shape.kind == "transformer" else None,
    )


def detached(out: Outputs) -> Outputs:
    """What a trainer passes for the teacher: the same values without a graph."""
    return Outputs(
        logits=out.logits.detach(),
        mask=out.mask,
        hidden_states=tuple(h.detach() for h in out.hidden_states),
        first_token=tuple(h.detach() for h in out.first_token),
        attentions=tuple(a.detach() for a in out.attentions),
    )


@pytest.fixture
def pair() -> tuple[Outputs, Outputs, Outputs]:
    """A transformer student, a GRU student (both 5 positions) and a 6-position teacher."""
    torch.manual_seed(0)
    return outputs(STUDENT, STUDENT_MASK), outputs(GRU, STUDENT_MASK), outputs(TEACHER, TEACHER_MASK, heads=3)


def cut(states: tuple[Tensor, ...], indices: list[int]) -> Tensor:
    return torch.stack([states[i][:, :5] for i in indices], dim=1)


# --------------------------------------------------------------------------- losses vs. direct computation


def test_dist(pair: tuple[Outputs, Outputs, Outputs]) -> None:
    student, _, teacher = pair
    method = get_method("dist")(STUDENT, TEACHER)
    assert method.hp == {"temperature": 10.0, "beta": 1.0, "gamma": 1.0, "eps": 1e-8}
    expected = losses.dist(student.logits, teacher.logits, 10.0, 1.0, 1.0)
    torch.testing.assert_close(method(student, teacher, LABELS)["loss"], expected)


def test_dkd(pair: tuple[Outputs, Outputs, Outputs]) -> None:
    student, _, teacher = pair
    method = get_method("dkd")(STUDENT, TEACHER, ce_weight=0.5)
    expected = 0.5 * F.cross_entropy(student.logits, LABELS) + losses.dkd(
        student.logits, teacher.logits, LABELS, 4.0, 1.0, 8.0
    )
    torch.testing.assert_close(method(student, teacher, LABELS)["loss"], expected)


@pytest.mark.parametrize(("kind", "student_layers"), [("transformer", [1, 2]), ("gru", [0, 1])])
def test_pkd(pair: tuple[Outputs, Outputs, Outputs], kind: str, student_layers: list[int]) -> None:
    """Student layers 1, 2 (of 3) meet teacher layers 2, 4 (of 6); the pair 3 ↔ 6 is dropped."""
    transformer, gru, teacher = pair
    student, shape = (transformer, STUDENT) if kind == "transformer" else (gru, GRU)
    method = get_method("pkd")(shape, TEACHER)
    assert len(method.projections) == 2
    s = torch.stack([student.first_token[i] for i in student_layers], dim=1)
    t = torch.stack([proj(teacher.first_token[i]) for proj, i in zip(method.projections, [2, 4], strict=True)], dim=1)
    logit = losses.soft_cross_entropy(student.logits, teacher.logits, 10.0)
    expected = 100 * logit + 10 * losses.pkd_features(s, t)
    torch.testing.assert_close(method(student, teacher, LABELS)["loss"], expected)


def test_pkd_batched_projections_equal_per_layer_ones_in_gradient(pair: tuple[Outputs, Outputs, Outputs]) -> None:
    """The projections run as one batched product; their gradients equal those of one Linear per layer."""
    student, _, teacher = pair
    method = get_method("pkd")(STUDENT, TEACHER)
    method(student, teacher, LABELS)["loss"].backward()
    got = [(p.weight.grad.clone(), p.bias.grad.clone()) for p in method.projections]
    method.zero_grad()
    s = torch.stack([student.first_token[i] for i in (1, 2)], dim=1)
    t = torch.stack([proj(teacher.first_token[i]) for proj, i in zip(method.projections, [2, 4], strict=True)], dim=1)
    (100 * losses.soft_cross_entropy(student.logits, teacher.logits, 10.0) + 10 * losses.pkd_features(s, t)).backward()
    for (weight, bias), proj in zip(got, method.projections, strict=True):
        torch.testing.assert_close(weight, proj.weight.grad)
        torch.testing.assert_close(bias, proj.bias.grad)


def test_pkd_needs_two_student_layers() -> None:
    with pytest.raises(ValueError, match="at least 2 layers"):
        get_method("pkd")(ModelShape("gru", 1, 4, 8), TEACHER)


@pytest.mark.parametrize(
    ("kind", "student_layers", "teacher_layers"),
    [("transformer", [0, 1, 2, 3], [0, 2, 4, 6]), ("gru", [0, 1, 2], [2, 4, 6])],
)
@pytest.mark.parametrize("study_padding", [False, True])
def test_ckd(
    pair: tuple[Outputs, Outputs, Outputs],
    kind: str,
    student_layers: list[int],
    teacher_layers: list[int],
    study_padding: bool,
) -> None:
    transformer, gru, teacher = pair
    student, shape = (transformer, STUDENT) if kind == "transformer" else (gru, GRU)
    method = get_method("ckd")(shape, TEACHER, study_padding=study_padding, window=2)
    relations = losses.ckd_relations(
        cut(student.hidden_states, student_layers),
        cut(teacher.hidden_states, teacher_layers),
        2,
        10.0,
        None if study_padding else COMMON,
    )
    expected = 9 * losses.soft_cross_entropy(student.logits, teacher.logits, 3.0) + 10 * relations
    torch.testing.assert_close(method(student, teacher, LABELS)["loss"], expected)


def test_ckd_relations_vanish_for_identical_states(pair: tuple[Outputs, Outputs, Outputs]) -> None:
    student = pair[0]
    result = get_method("ckd")(STUDENT, STUDENT)(student, student, LABELS)
    assert result["relations"].abs().item() < 1e-6


@pytest.mark.parametrize(
    ("kind", "layers", "student_layers", "teacher_layers"),
    [
        ("transformer", "", [0, 1, 2, 3], [0, 2, 4, 6]),
        ("transformer", "1,2,6", [0, 1, 2, 3], [0, 1, 2, 6]),
        ("gru", "", [0, 1, 2], [2, 4, 6]),
    ],
)
def test_tinybert(
    pair: tuple[Outputs, Outputs, Outputs],
    kind: str,
    layers: str,
    student_layers: list[int],
    teacher_layers: list[int],
) -> None:
    transformer, gru, teacher = pair
    student, shape = (transformer, STUDENT) if kind == "transformer" else (gru, GRU)
    method = get_method("tinybert")(shape, TEACHER, layers=layers, kd_weight=0.5, temperature=2.0)
    assert (method.projection.in_features, method.projection.out_features) == (8, 12)
    hidden = losses.hidden_mse(
        method.projection(cut(student.hidden_states, student_layers)),
        cut(teacher.hidden_states, teacher_layers),
        COMMON,
    )
    expected = hidden + 0.5 * losses.soft_cross_entropy(student.logits, teacher.logits, 2.0)
    torch.testing.assert_close(method(student, teacher, LABELS)["loss"], expected)


def test_tinybert_hidden_term_vanishes_for_identical_states(pair: tuple[Outputs, Outputs, Outputs]) -> None:
    student = pair[0]
    method = get_method("tinybert")(STUDENT, STUDENT)
    with torch.no_grad():
        method.projection.weight.copy_(torch.eye(8))
        method.projection.bias.zero_()
    assert method(student, student, LABELS)["hidden"].item() < 1e-10


@pytest.mark.parametrize(("teacher_layer", "index"), [(-1, 5), (2, 1)])
def test_minilm(pair: tuple[Outputs, Outputs, Outputs], teacher_layer: int, index: int) -> None:
    """The maps are cut to 5 positions; keys not real on both sides are removed and rows renormalised."""
    student, _, teacher = pair
    method = get_method("minilm")(STUDENT, TEACHER, teacher_layer=teacher_layer, kd_weight=0.5)

    def common_keys(attn: Tensor) -> Tensor:
        kept = attn[..., :5, :5].masked_fill(~COMMON[:, None, None, :], 0.0)
        return kept / kept.sum(-1, keepdim=True)

    expected = losses.attention_relation(
        common_keys(student.attentions[-1]), common_keys(teacher.attentions[index]), COMMON
    ) + 0.5 * losses.soft_cross_entropy(student.logits, teacher.logits, 1.0)
    torch.testing.assert_close(method(student, teacher, LABELS)["loss"], expected)


def test_minilm_is_plain_attention_kl_when_positions_agree(pair: tuple[Outputs, Outputs, Outputs]) -> None:
    student = pair[0]
    teacher = outputs(ModelShape("transformer", 6, 12, 12), STUDENT_MASK, heads=3)
    expected = losses.attention_relation(student.attentions[-1], teacher.attentions[-1], STUDENT_MASK)
    torch.testing.assert_close(get_method("minilm")(STUDENT, TEACHER)(student, teacher, LABELS)["loss"], expected)


def test_minilm_rejects_gru_students_and_bad_layers() -> None:
    with pytest.raises(ValueError, match="methods for a GRU student: ckd, combo, dist, dkd, ft, kd, pkd, tinybert"):
        get_method("minilm")(GRU, TEACHER)
    with pytest.raises(ValueError, match="teacher_layer=7"):
        get_method("minilm")(STUDENT, TEACHER, teacher_layer=7)
    with pytest.raises(ValueError, match="teacher_layer=0"):
        get_method("minilm")(STUDENT, TEACHER, teacher_layer=0)


# ------------------------------------------------------------------------------------------------ gradients


CASES = [
    ("dist", "transformer"), ("dist", "gru"), ("dkd", "transformer"), ("dkd", "gru"),
    ("pkd", "transformer"), ("pkd", "gru"), ("ckd", "transformer"), ("ckd", "gru"),
    ("tinybert", "transformer"), ("tinybert", "gru"), ("minilm", "transformer"),
]


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_gradients_reach_student_and_projections_not_teacher(
    pair: tuple[Outputs, Outputs, Outputs], name: str, kind: str
) -> None:
    transformer, gru, teacher = pair
    student, shape = (transformer, STUDENT) if kind == "transformer" else (gru, GRU)
    method = get_method(name)(shape, TEACHER)
    method(student, detached(teacher), LABELS)["loss"].backward()

    features = {
        "pkd": student.first_token[1:3] if kind == "transformer" else student.first_token[:2],
        "ckd": student.hidden_states,
        "tinybert": student.hidden_states,
    }.get(name, ())
    # minilm has no logit term by default and reads only the last attention map
    used = student.attentions[-1:] if name == "minilm" else [student.logits, *features]
    for tensor in used:
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0
    for param in method.parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0
    teacher_leaves = [teacher.logits, *teacher.hidden_states, *teacher.first_token, *teacher.attentions]
    assert all(t.grad is None for t in teacher_leaves)


# ------------------------------------------------------------------------------------------------- registry


def test_registry_lists_the_methods() -> None:
    expected = {"ft", "kd", "dist", "pkd", "ckd", "dkd", "minilm", "tinybert"}
    assert expected <= set(all_methods())
    for name in expected:
        method = get_method(name)
        assert issubclass(method, Method) and method.name == name and method.summary


def test_a_method_is_one_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file dropped into the package folder is discovered and registered on the next registry use."""
    import codekd.methods

    (tmp_path / "mymethod.py").write_text(
        "from codekd.methods import Method, register\n\n\n"
        "@register\n"
        "class Mine(Method):\n"
        "    name = 'mymethod'\n"
        "    teacher_needs = ()\n\n"
        "    def forward(self, student, teacher, labels):\n"
        "        return {'loss': student.logits.sum()}\n"
    )
    monkeypatch.setattr(codekd.methods, "__path__", [*codekd.methods.__path__, str(tmp_path)])
    try:
        assert "mymethod" not in REGISTRY
        method = get_method("mymethod")
        assert REGISTRY["mymethod"] is method and "mymethod" in all_methods()
        result = method(STUDENT)(Outputs(torch.ones(3, 2), torch.ones(3, 4)), None, LABELS)
        assert result["loss"].item() == 6
    finally:
        REGISTRY.pop("mymethod", None)
        sys.modules.pop("codekd.methods.mymethod", None)


# ------------------------------------------------------------------------------------------ training smoke


def batch(length: int, ids: Tensor) -> dict[str, Tensor]:
    """`<s>` + the first `length` - 1 of `ids` per row, with rows 2 and 5 padded (id 1) from position 7."""
    input_ids = torch.cat([torch.zeros(len(ids), 1, dtype=torch.long), ids[:, : length - 1]], dim=1)
    mask = torch.ones_like(input_ids)
    mask[[2, 5], 7:] = 0
    return {"input_ids": input_ids.masked_fill(mask == 0, 1), "attention_mask": mask}


STUDENTS = {"transformer": custom_spec("roberta", 100, 16, 2, 2, 32), "gru": custom_spec("gru", 100, 8, 2)}


@pytest.fixture(scope="module")
def teacher_model() -> RobertaForSequenceClassification:
    """A random 4-layer teacher; the wide init makes its logits and attention far from uniform."""
    torch.manual_seed(0)
    return RobertaForSequenceClassification(RobertaConfig(
        vocab_size=100, hidden_size=24, num_hidden_layers=4, num_attention_heads=2, intermediate_size=48,
        num_labels=3, initializer_range=0.3, attn_implementation="eager",
    ))


# Soft-CE terms weight·CE(z_s/T, softmax(z_t/T)) cannot fall below weight·entropy(softmax(z_t/T)).
SOFT_CE = {"pkd": (100.0, 10.0), "ckd": (9.0, 3.0), "tinybert": (1.0, 1.0)}
# DKD's label CE and its TCKD pull p_y different ways; without the CE term its minimum is 0.
SMOKE_OPTIONS = {"dkd": {"ce_weight": 0.0}}


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_training_lowers_the_loss(
    teacher_model: RobertaForSequenceClassification, name: str, kind: str
) -> None:
    """30 AdamW steps on one fixed batch (student 12 tokens, teacher 14): every method's excess loss (above
    its known minimum) falls by at least 30 %."""
    torch.manual_seed(1)
    ids = torch.randint(5, 100, (8, 13))
    labels = torch.randint(0, 3, (8,))
    student = build_student(STUDENTS[kind], num_labels=3)
    student.eval()  # no dropout: the loss is a deterministic function of the weights
    method = get_method(name)(shape_of(student), shape_of(teacher_model), **SMOKE_OPTIONS.get(name, {}))
    prepare(student, method.student_needs)
    teacher = run_frozen(teacher_model, batch(14, ids), method.teacher_needs)
    weight, temperature = SOFT_CE.get(name, (0.0, 1.0))
    floor = weight * losses.soft_cross_entropy(teacher.logits, teacher.logits, temperature).item()
    optimizer = torch.optim.AdamW([*student.parameters(), *method.parameters()], lr=1e-2)

    def loss() -> Tensor:
        return method(run(student, batch(12, ids), method.student_needs), teacher, labels)["loss"]

    initial = loss().item()
    for _ in range(30):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    final = loss().item()
    assert final - floor < 0.7 * (initial - floor), (initial, final, floor)
