"""COMBO: a weighted sum of methods from a config, checked against `codekd.losses` on synthetic outputs."""

import pytest
import torch
from test_methods import LABELS, STUDENT, STUDENT_MASK, TEACHER, TEACHER_MASK, outputs

from codekd import losses
from codekd.methods import get_method
from codekd.models.adapters import Outputs

KD_DIST = [{"method": "kd", "weight": 1, "temperature": 4}, {"method": "dist", "weight": 0.5}]


@pytest.fixture
def pair() -> tuple[Outputs, Outputs]:
    torch.manual_seed(0)
    return outputs(STUDENT, STUDENT_MASK), outputs(TEACHER, TEACHER_MASK, heads=3)


def test_weighted_sum_of_parts(pair: tuple[Outputs, Outputs]) -> None:
    student, teacher = pair
    method = get_method("combo")(STUDENT, TEACHER, parts=KD_DIST)
    assert (method.teacher_needs, method.student_needs) == (("logits",), ("logits",))
    kd = losses.kd_loss(student.logits, teacher.logits, LABELS, 4.0)
    dist = losses.dist(student.logits, teacher.logits, 10.0, 1.0, 1.0)
    result = method(student, teacher, LABELS)
    assert set(result) == {"loss", "0:kd", "1:dist"}
    torch.testing.assert_close(result["loss"], kd + 0.5 * dist)
    torch.testing.assert_close(result["1:dist"], dist)


def test_parts_from_yaml_text(pair: tuple[Outputs, Outputs]) -> None:
    """`--parts "[...]"` on the command line arrives as a string and is read as YAML."""
    student, teacher = pair
    text = "[{method: kd, weight: 1, temperature: 4}, {method: dist, weight: 0.5}]"
    method = get_method("combo")(STUDENT, TEACHER, parts=text)
    assert method.hp["parts"] == KD_DIST
    expected = get_method("combo")(STUDENT, TEACHER, parts=KD_DIST)(student, teacher, LABELS)["loss"]
    torch.testing.assert_close(method(student, teacher, LABELS)["loss"], expected)


def test_parts_are_submodules_and_needs_are_the_union(pair: tuple[Outputs, Outputs]) -> None:
    student, teacher = pair
    parts = [{"method": "kd"}, {"method": "pkd", "weight": 0.5, "beta": 10}, {"method": "minilm", "weight": 0.1}]
    method = get_method("combo")(STUDENT, TEACHER, parts=parts)
    pkd = method.parts[1]
    assert {id(p) for p in pkd.projections.parameters()} <= {id(p) for p in method.parameters()}
    assert "parts.1.projections.0.weight" in method.state_dict()
    assert method.teacher_needs == ("logits", "first_token", "attentions")
    assert method.student_needs == ("logits", "first_token", "attentions")
    method(student, teacher, LABELS)["loss"].backward()
    assert all(p.grad is not None for p in pkd.projections.parameters())


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([], "parts is empty"),
        ([{"method": "kd"}, {"method": "foo"}], r"combo part 1: unknown method 'foo'; available: ckd, dist"),
        ([{"weight": 1}], "combo part 0: unknown method None"),
        ([{"method": "combo", "parts": KD_DIST}], "combo part 0: a combo cannot contain a combo"),
        ([{"method": "kd", "weight": "heavy"}], "combo part 0: weight 'heavy' must be a finite number"),
        ([{"method": "kd", "weight": True}], "combo part 0: weight True must be a finite number"),
        (["kd"], "combo part 0: expected a mapping"),
        ([{"method": "kd", "beta": 1}], r"combo part 0: method 'kd': unknown option\(s\) \['beta'\]"),
        ({"method": "kd"}, "option parts=.* must be a list"),
    ],
)
def test_bad_parts_are_rejected(parts: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_method("combo")(STUDENT, TEACHER, parts=parts)
