"""The BiGRU student of Wang et al., "An Empirical Study of Knowledge Distillation for Code
Understanding Tasks" (arXiv 2508.15423), §3 of STUDY.md, as a Hugging Face model.

Architecture (as in the study's ``model_gru.py``): RoBERTa-style embeddings of width H → a stack of
bidirectional GRU layers of width H → pooled = forward state at the last token ‖ backward state at the
first token (2H) → RoBERTa classification head (2H → 2H, tanh, 2H → C).

Two deliberate differences from the study's code, neither of which changes the parameter count:

- Padding does not leak: the GRU reads packed sequences, so the forward state is taken at the last *real*
  token (the study's GRU runs over the pads and pools at the last *padded* position). A sequence gets the
  same logits alone or padded in a batch. ``run_over_pads=True`` (config; ``--gru-over-pads``, part of
  ``--study-compat``) restores the study's behaviour: no packing, the GRU reads every position and the
  forward state is the one after the last pad.
- The stack is built from single-layer ``nn.GRU`` modules (as the study's CKD variant does) rather than
  one multi-layer ``nn.GRU``, so that every layer's outputs and final states are available for
  feature-based distillation (PKD uses the final states, CKD the per-token outputs).

This file imports only torch and transformers: codekd copies it into every BiGRU run directory as
``modeling_bigru.py`` (named by ``auto_map`` in ``config.json``), so plain transformers loads the model
with ``trust_remote_code=True``. Importing this module registers ``"bigru"`` with ``AutoConfig`` and
``AutoModelForSequenceClassification``, so codekd loads it without running that copy.
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class BiGRUConfig(PretrainedConfig):
    """Configuration of a BiGRU student; ``hidden_size`` is the per-direction GRU width H.

    The defaults are the study's BiGRU-1.5M (vocabulary 2000, H 176, 2 layers). Pass ``num_labels`` for the
    head size. Special-token ids follow the study's byte-level BPE tokenizers (``<s>`` 0, ``<pad>`` 1,
    ``</s>`` 2). Like every transformers-5 config this is a keyword-only dataclass.
    """

    model_type = "bigru"

    vocab_size: int = 2000
    hidden_size: int = 176
    num_hidden_layers: int = 2
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2
    hidden_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-5
    classifier_dropout: float | None = None
    initializer_range: float = 0.02
    run_over_pads: bool = False  # the study's code: no packing, pooled at the last (padded) position


@dataclass
class BiGRUOutput(SequenceClassifierOutput):
    """``SequenceClassifierOutput`` plus each GRU layer's final states.

    ``final_states[l]`` is (B, 2H) = forward h_n ‖ backward h_n of layer l: the features PKD distils for
    BiGRU students in the study. Filled only when ``output_hidden_states=True``.
    """

    final_states: tuple[torch.Tensor, ...] | None = None


class BiGRUEmbeddings(nn.Module):
    """RoBERTa-style embeddings: word + position + token type, then LayerNorm and dropout.

    Position ids count the non-pad tokens from ``padding_idx + 1`` on; pads get ``padding_idx``, as in
    RoBERTa, so the study's 514 positions cover 512 tokens.
    """

    def __init__(self, config: BiGRUConfig) -> None:
        super().__init__()
        self.padding_idx = config.pad_token_id
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=self.padding_idx
        )
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings, config.hidden_size, padding_idx=self.padding_idx
        )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Embed (B, N) token ids into (B, N, H)."""
        not_pad = input_ids.ne(self.padding_idx).long()
        position_ids = torch.cumsum(not_pad, dim=1) * not_pad + self.padding_idx
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        embeddings = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(position_ids)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.LayerNorm(embeddings))


class BiGRUForSequenceClassification(PreTrainedModel):
    """BiGRU student classifier (see the module docstring for the architecture and the study).

    Submodules: ``embeddings``, ``layers`` (one single-layer bidirectional ``nn.GRU`` per layer; the first
    reads H features, the others 2H) and ``classifier``. Weights are initialised like RoBERTa by the
    inherited ``_init_weights`` (normal(0, 0.02) for Linear and Embedding, zero bias and pad row, LayerNorm
    ones/zeros); the GRUs keep PyTorch's default init, as in the study.
    """

    config_class = BiGRUConfig
    base_model_prefix = "bigru"

    def __init__(self, config: BiGRUConfig) -> None:
        super().__init__(config)
        hidden = config.hidden_size
        self.embeddings = BiGRUEmbeddings(config)
        self.layers = nn.ModuleList(
            nn.GRU(hidden if i == 0 else 2 * hidden, hidden, batch_first=True, bidirectional=True)
            for i in range(config.num_hidden_layers)
        )
        dropout = (
            config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(2 * hidden, 2 * hidden),
            nn.Tanh(),
            nn.Dropout(dropout),
            nn.Linear(2 * hidden, config.num_labels),
        )
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BiGRUOutput | tuple:
        """Classify right-padded (B, N) token ids; pads are skipped via packed sequences.

        ``attention_mask`` defaults to ``input_ids != pad_token_id``. With ``output_hidden_states``,
        ``hidden_states`` holds each GRU layer's (B, N, 2H) outputs (zeros at pads; no embedding entry) and
        ``final_states`` each layer's (B, 2H) final states. ``labels`` adds a cross-entropy loss. Extra
        keyword arguments (e.g. from ``Trainer``) are ignored.
        """
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if return_dict is None:
            return_dict = self.config.return_dict
        if attention_mask is None:
            attention_mask = input_ids.ne(self.config.pad_token_id)
        embedded = self.embeddings(input_ids, token_type_ids)
        if self.config.run_over_pads:
            packed = embedded
        else:
            lengths = attention_mask.sum(dim=1).cpu()
            packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        hidden_states, final_states = [], []
        for gru in self.layers:
            packed, h_n = gru(packed)
            final_states.append(torch.cat([h_n[0], h_n[1]], dim=-1))
            if output_hidden_states:
                hidden_states.append(packed if self.config.run_over_pads else pad_packed_sequence(
                    packed, batch_first=True, total_length=input_ids.shape[1])[0])

        # The last layer's final states are exactly the study's pooling: forward state at the last (real)
        # token ‖ backward state at the first token.
        logits = self.classifier(final_states[-1])
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        output = BiGRUOutput(
            loss=loss,
            logits=logits,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            final_states=tuple(final_states) if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()


AutoConfig.register("bigru", BiGRUConfig, exist_ok=True)
AutoModelForSequenceClassification.register(BiGRUConfig, BiGRUForSequenceClassification, exist_ok=True)
