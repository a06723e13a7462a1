"""codekd's CPU attention with dropout (`codekd.models.attention`) against the direct form and against sdpa."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from codekd.models import build_student, get_preset
from codekd.models.adapters import prepare, run
from codekd.models.attention import NAME, DropoutAttention, attention, keep_mask


def _inputs(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 4, dtype=dtype, requires_grad=True) for _ in range(3))
    mask = torch.ones(3, 1, 7, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False  # example 1: its last two tokens are padding
    mask[2, ..., 2:] = False
    return q, k, v, mask


def _direct(q, k, v, mask, keep, scale, p):
    """The textbook form: masked softmax, dropout by `keep` scaled by 1 / (1 - p), times v."""
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    return (torch.softmax(scores, -1) * keep / (1 - p)) @ v


def test_equals_the_direct_form_with_the_same_mask() -> None:
    q, k, v, mask = _inputs()
    keep = keep_mask((3, 2, 7, 7), 0.3)
    ours = DropoutAttention.apply(q, k, v, mask, keep, 0.5, 0.3)
    direct = _direct(q, k, v, mask, keep, 0.5, 0.3)
    assert torch.allclose(ours, direct, atol=1e-12)
    up = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, (q, k, v), up), torch.autograd.grad(direct, (q, k, v), up), strict=True):
        assert torch.allclose(a, b, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b, c: DropoutAttention.apply(a, b, c, mask, keep, 0.5, 0.3),
                                    (q, k, v))
    no_mask = DropoutAttention.apply(q, k, v, None, keep, 0.5, 0.3)
    assert torch.allclose(no_mask, _direct(q, k, v, torch.ones_like(mask), keep, 0.5, 0.3), atol=1e-12)


def test_keep_mask_rate_and_seed() -> None:
    torch.manual_seed(1)
    a = keep_mask((1000, 1000), 0.1)
    torch.manual_seed(1)
    assert torch.equal(a, keep_mask((1000, 1000), 0.1))
    assert not torch.equal(a, keep_mask((1000, 1000), 0.1))  # the next draw differs
    # 10^6 Bernoulli(0.9) draws: the standard deviation of the rate is 3e-4
    assert abs(a.float().mean().item() - 0.9) < 1.5e-3
    assert keep_mask((5, 5), 0.0).all()


def test_attention_function_falls_back_to_sdpa() -> None:
    q, k, v, mask = _inputs(torch.float32)
    module = torch.nn.Module()
    module.is_causal = False
    for inputs, p in (((q, k, v), 0.0), (tuple(t.bfloat16() for t in (q, k, v)), 0.1)):
        torch.manual_seed(2)
        ours, _ = attention(module, *inputs, mask, dropout=p, scaling=0.5)
        torch.manual_seed(2)
        assert torch.equal(ours, sdpa_attention_forward(module, *inputs, mask, dropout=p, scaling=0.5)[0])
    torch.manual_seed(3)
    ours, _ = attention(module, q, k, v, mask, dropout=0.25, scaling=0.5)
    torch.manual_seed(3)
    keep = keep_mask((3, 2, 7, 7), 0.25)
    assert torch.allclose(ours, _direct(q, k, v, mask, keep, 0.5, 0.25).transpose(1, 2), atol=1e-6)


def test_a_prepared_student_runs_it_in_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """With every probability kept, attention dropout only scales the attention output by 1 / (1 - p): the same
    as sdpa's model in eval mode with its value projections scaled so."""
    spec = replace(get_preset("roberta-0.6m"), vocab_size=300, dropout=0.0, attention_dropout=0.2)
    torch.manual_seed(0)
    ours = prepare(build_student(spec, 3), ()).double()
    plain = build_student(spec, 3).double()
    plain.load_state_dict(ours.state_dict())
    assert plain.config._attn_implementation == "sdpa" and ours.config._attn_implementation == NAME
    with torch.no_grad():
        for layer in plain.roberta.encoder.layer:
            layer.attention.self.value.weight /= 0.8
            layer.attention.self.value.bias /= 0.8
    ids = torch.randint(5, 300, (4, 20))
    mask = torch.ones(4, 20, dtype=torch.long)
    mask[0, 12:] = 0
    kept = []
    monkeypatch.setattr("codekd.models.attention.keep_mask",
                        lambda shape, p: kept.append(shape) or torch.ones(shape, dtype=torch.bool))
    ours.train(), plain.eval()
    assert torch.allclose(ours(input_ids=ids, attention_mask=mask).logits,
                          plain(input_ids=ids, attention_mask=mask).logits, atol=1e-10)
    assert kept == [(4, spec.num_heads, 20, 20)] * spec.num_layers
    monkeypatch.undo()
    torch.manual_seed(5)
    first = ours(input_ids=ids, attention_mask=mask).logits
    torch.manual_seed(5)
    assert torch.equal(first, ours(input_ids=ids, attention_mask=mask).logits)  # a seed repeats a run
    assert NAME not in ours.config.to_json_string()  # a saved student loads without codekd


@pytest.mark.parametrize("needs", [("attentions",), ()])
def test_prepare_picks_eager_for_attention_maps(needs: tuple[str, ...]) -> None:
    model = prepare(build_student(replace(get_preset("roberta-0.6m"), vocab_size=300), 3), needs)
    assert model.config._attn_implementation == ("eager" if needs else NAME)


def test_student_step_bench_runs() -> None:
    """bench/student_step.py at tiny sizes, so it cannot rot: one row per length, a ratio in each."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "bench/student_step.py", "--student", "roberta-0.6m", "--lengths", "12,24",
                           "--batch-size", "4", "--rounds", "2"], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| 12 |", "| 24 |"))]
    assert len(rows) == 2 and all(row.endswith("× |") for row in rows)


def test_maps_from_the_read_layers_only() -> None:
    """MiniLM reads the student's last layer: only it returns maps, equal to eager attention's."""
    spec = replace(get_preset("roberta-0.6m"), vocab_size=300)
    torch.manual_seed(0)
    ours = prepare(build_student(spec, 3), ("logits", "attentions"), [-1])
    eager = prepare(build_student(spec, 3), ("logits", "attentions"))
    eager.load_state_dict(ours.state_dict())
    assert ours.config._attn_implementation == NAME and eager.config._attn_implementation == "eager"
    ids = torch.randint(5, 300, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0
    ours.eval(), eager.eval()
    a = run(ours, {"input_ids": ids, "attention_mask": mask}, ("logits", "attentions"))
    b = run(eager, {"input_ids": ids, "attention_mask": mask}, ("logits", "attentions"))
    assert len(a.attentions) == 1 and len(b.attentions) == spec.num_layers
    assert torch.allclose(a.attentions[0], b.attentions[-1], atol=1e-6)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    ours.train()
    torch.manual_seed(1)
    first = run(ours, {"input_ids": ids, "attention_mask": mask}, ("logits", "attentions")).attentions[0]
    torch.manual_seed(1)
    again = run(ours, {"input_ids": ids, "attention_mask": mask}, ("logits", "attentions")).attentions[0]
    assert torch.equal(first, again) and first.requires_grad
