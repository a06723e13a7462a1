"""Test-wide setup: one CPU thread (small models run faster and deterministically that way) and no
Hugging Face network access; `shared_data` points at the project's shared real datasets when present."""

import contextlib
import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["CODEKD_CACHE"] = tempfile.mkdtemp(prefix="codekd-test-cache-")  # never the user's cache
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` next to the repository root; tests that need it skip when it is missing."""
    path = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.skip("../shared/data is absent (a user's fresh clone has no ../shared); CI always has it")
    return path


def _head(src: Path, dst: Path, names: dict[str, int]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name, n in names.items():
        lines = (src / name).read_text(encoding="utf-8").splitlines(keepends=True)[:n]
        (dst / name).write_text("".join(lines), encoding="utf-8")
    return dst


@pytest.fixture(scope="session")
def small_exception(tmp_path_factory) -> Path:
    """The first records of the shipped (licence-clean) exception slice, CuBERT layout."""
    from codekd.data import demo_data_dir

    return _head(demo_data_dir(), tmp_path_factory.mktemp("exc"),
                 {"train.jsonl": 96, "dev.jsonl": 32, "test.jsonl": 32})


@pytest.fixture(scope="session")
def small_vocab(small_exception, tmp_path_factory) -> Path:
    from codekd.pipeline import make_vocab

    return make_vocab("exception", small_exception, 400, tmp_path_factory.mktemp("v") / "vocab", max_length=64)


@pytest.fixture(scope="session")
def tiny_encoder(small_vocab, tmp_path_factory) -> Path:
    """A 'pre-trained' tiny RoBERTa encoder directory (random weights) with a BPE tokenizer."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    tok = AutoTokenizer.from_pretrained(small_vocab)
    torch.manual_seed(0)
    model = RobertaModel(RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=4,
                                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=130,
                                       type_vocab_size=1, pad_token_id=1))
    path = tmp_path_factory.mktemp("enc") / "tiny-roberta"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_teacher(small_exception, tiny_encoder, tmp_path_factory) -> Path:
    """`tiny_encoder` fine-tuned on `small_exception` by `codekd teacher`."""
    from codekd.pipeline import train_teacher
    from codekd.train import TrainConfig

    out = tmp_path_factory.mktemp("teacher") / "teacher"
    train_teacher("exception", small_exception, str(tiny_encoder), out,
                  TrainConfig(epochs=1, lr=1e-3, batch_size=16), max_length=64)
    return out


@pytest.fixture
def killed_after_first_checkpoint(monkeypatch):
    """A context in which a run dies (KeyboardInterrupt) right after writing its first checkpoint."""
    import codekd.train as train_mod

    @contextlib.contextmanager
    def killed():
        real = train_mod._save_checkpoint

        def save_then_die(path, state):
            real(path, state)
            raise KeyboardInterrupt("killed after epoch 1")

        with monkeypatch.context() as m:
            m.setattr(train_mod, "_save_checkpoint", save_then_die)
            with pytest.raises(KeyboardInterrupt):
                yield
    return killed
