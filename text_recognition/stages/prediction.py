# Follows clovaai/deep-text-recognition-benchmark (Copyright (c) 2019-present NAVER Corp., Apache-2.0); see NOTICE.
"""Prediction stage: a CTC projection or a Bahdanau attention decoder (RARE/ASTER style). Each head owns its loss.

The attention decoder's mode is chosen by its argument: given ``text`` it uses teacher forcing, without it it
decodes greedily. It never looks at ``self.training`` (DTRB's ``is_train`` flag mixed the two up in validation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_stage
from ..tokenizer import BLANK_ID, EOS_ID, GO_ID


def resize_rows(linear: nn.Linear, sources: list[int | None], reference: int, margin: float) -> None:
    """Rows of ``linear`` taken from ``sources`` (old row ids); ``None`` rows (new symbols) copy ``reference`` with
    its bias lowered by ``margin``, so that they are never the argmax."""
    index = torch.tensor([reference if k is None else k for k in sources], device=linear.weight.device)
    weight, bias = linear.weight[index].clone(), linear.bias[index].clone()
    added = torch.tensor([k is None for k in sources], device=bias.device)
    bias[added] -= margin
    linear.weight = nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
    linear.bias = nn.Parameter(bias, requires_grad=linear.bias.requires_grad)
    linear.out_features = len(sources)


@register_stage("prediction", "CTC")
class CTCHead(nn.Linear):
    """CTC head: one linear layer per column, blank at index 0. Keys ``Prediction.weight``/``Prediction.bias``."""

    teacher_forced = False  # training does not feed it the labels

    @classmethod
    def from_config(cls, config, in_features: int) -> CTCHead:
        return cls(in_features, config.num_class)

    def forward(self, features: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T, in] -> logits [B, T, num_class]. ``text`` is accepted for a uniform interface and ignored."""
        return super().forward(features)

    @torch.no_grad()
    def resize_classes(self, sources: list[int | None], margin: float) -> None:
        """Classes blank + symbols, row i from old class ``sources[i]``; a new symbol (``None``) starts as the
        blank's row with a bias ``margin`` lower."""
        resize_rows(self, sources, BLANK_ID, margin)

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor, baidu: bool = False) -> torch.Tensor:
        """CTC loss of logits [B, T, C] against padded targets [B, S] with target lengths [B].

        ``baidu=False`` is ``torch.nn.CTCLoss(zero_infinity=True)`` with mean reduction, as DTRB trains by default.
        ``baidu=True`` reproduces Baidu warp-ctc as DTRB's ``--baiduCTC`` used it: softmax inside, losses summed over
        the batch and divided by the batch size (no division by target length).
        """
        log_probs = logits.float().log_softmax(2).permute(1, 0, 2)  # [T, B, C]; CTC in fp32 even under autocast
        input_lengths = torch.full((logits.size(0),), logits.size(1), dtype=torch.long, device=logits.device)
        lengths = lengths.to(device=logits.device, dtype=torch.long)
        targets = targets.to(logits.device)
        if baidu:
            per_sample = F.ctc_loss(log_probs, targets, input_lengths, lengths, blank=BLANK_ID, reduction="none",
                                    zero_infinity=True)  # fmt: skip
            return per_sample.sum() / logits.size(0)
        return F.ctc_loss(log_probs, targets, input_lengths, lengths, blank=BLANK_ID, reduction="mean",
                          zero_infinity=True)  # fmt: skip


class AttentionCell(nn.Module):
    """One decoder step: additive attention over the encoder columns, then an LSTM cell on [context, one-hot]."""

    def __init__(self, input_size: int, hidden_size: int, num_embeddings: int) -> None:
        super().__init__()
        self.i2h = nn.Linear(input_size, hidden_size, bias=False)
        self.h2h = nn.Linear(hidden_size, hidden_size)
        self.score = nn.Linear(hidden_size, 1, bias=False)
        self.rnn = nn.LSTMCell(input_size + num_embeddings, hidden_size)
        self.hidden_size = hidden_size

    def forward(
        self,
        prev_hidden: tuple[torch.Tensor, torch.Tensor],
        batch_H: torch.Tensor,
        char_onehots: torch.Tensor,
        batch_H_proj: torch.Tensor | None = None,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``batch_H_proj`` = ``i2h(batch_H)`` may be passed in: it does not change between steps."""
        if batch_H_proj is None:
            batch_H_proj = self.i2h(batch_H)
        e = self.score(torch.tanh(batch_H_proj + self.h2h(prev_hidden[0]).unsqueeze(1)))  # [B, T, 1]
        alpha = F.softmax(e, dim=1)
        context = torch.bmm(alpha.permute(0, 2, 1), batch_H).squeeze(1)  # [B, in]
        cur_hidden = self.rnn(torch.cat([context, char_onehots.to(context.dtype)], 1), prev_hidden)
        return cur_hidden, alpha


@register_stage("prediction", "Attn")
class Attention(nn.Module):
    """Attention decoder with one-hot character inputs, ``[GO]`` = 0 and ``[s]`` = 1, as DTRB's."""

    teacher_forced = True  # training feeds it the labels

    def __init__(self, input_size: int, hidden_size: int, num_classes: int, batch_max_length: int = 25) -> None:
        super().__init__()
        self.attention_cell = AttentionCell(input_size, hidden_size, num_classes)
        self.hidden_size = hidden_size
        self.num_classes = num_classes
        self.generator = nn.Linear(hidden_size, num_classes)
        self.batch_max_length = batch_max_length

    @classmethod
    def from_config(cls, config, in_features: int) -> Attention:
        return cls(in_features, config.hidden_size, config.num_class, config.batch_max_length)

    def forward(
        self, batch_H: torch.Tensor, text: torch.Tensor | None = None, stop_at_eos: bool = False
    ) -> torch.Tensor:
        """Decode ``batch_max_length + 1`` steps from encoder features [B, T, in] to logits [B, steps, num_class].

        Args:
            batch_H: encoder features.
            text: teacher forcing: ids [B, >= batch_max_length + 1] starting with ``[GO]`` (the tokenizer's
                ``encode`` output); column ``i`` is fed at step ``i``. ``None``: greedy decoding from ``[GO]``.
            stop_at_eos: greedy only: stop once every row has produced ``[s]``. The returned logits are then
                shorter, but decode to the same texts and confidences. Used by ``recognize``; DTRB always ran all
                steps, which ``forward`` keeps as the default.
        """
        batch_size = batch_H.size(0)
        num_steps = self.batch_max_length + 1
        hidden = (batch_H.new_zeros(batch_size, self.hidden_size), batch_H.new_zeros(batch_size, self.hidden_size))
        batch_H_proj = self.attention_cell.i2h(batch_H)

        if text is not None:
            if text.size(1) < num_steps:
                raise ValueError(
                    f"Teacher forcing needs {num_steps} input ids per row (batch_max_length + 1), got {text.size(1)}."
                )
            onehots = F.one_hot(text[:, :num_steps].to(batch_H.device), self.num_classes).to(batch_H.dtype)
            output_hiddens = []
            for i in range(num_steps):
                hidden, _ = self.attention_cell(hidden, batch_H, onehots[:, i], batch_H_proj)
                output_hiddens.append(hidden[0])
            return self.generator(torch.stack(output_hiddens, dim=1))

        targets = torch.full((batch_size,), GO_ID, dtype=torch.long, device=batch_H.device)
        finished = torch.zeros(batch_size, dtype=torch.bool, device=batch_H.device)
        step_logits = []
        for _ in range(num_steps):
            onehots = F.one_hot(targets, self.num_classes).to(batch_H.dtype)
            hidden, _ = self.attention_cell(hidden, batch_H, onehots, batch_H_proj)
            logits = self.generator(hidden[0])
            step_logits.append(logits)
            targets = logits.argmax(1)
            if stop_at_eos:
                finished |= targets == EOS_ID
                if bool(finished.all()):
                    break
        return torch.stack(step_logits, dim=1)

    @torch.no_grad()
    def resize_classes(self, sources: list[int | None], margin: float) -> None:
        """Classes ``[GO]``, ``[s]`` + symbols, class i from old class ``sources[i]``: the generator's rows (a new
        symbol (``None``) starts as ``[s]``'s row with a bias ``margin`` lower) and the LSTM cell's one-hot input
        columns (a new symbol's is the mean of the old symbols')."""
        resize_rows(self.generator, sources, EOS_ID, margin)
        cell = self.attention_cell.rnn
        context = cell.input_size - self.num_classes  # the one-hot columns are the last num_classes of weight_ih
        weight = cell.weight_ih
        onehot = weight[:, context:]
        mean = onehot[:, 2 : self.num_classes].mean(dim=1, keepdim=True)  # the old symbols' columns
        columns = [mean if k is None else onehot[:, k : k + 1] for k in sources]
        cell.weight_ih = nn.Parameter(torch.cat([weight[:, :context], *columns], dim=1).clone(),
                                      requires_grad=weight.requires_grad)  # fmt: skip
        cell.input_size = context + len(sources)
        self.num_classes = len(sources)

    @staticmethod
    def loss(
        logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor | None = None, label_smoothing: float = 0.0
    ) -> torch.Tensor:
        """Cross-entropy of logits [B, L+1, C] against the encoded targets [B, L+2] shifted by one (``[GO]`` dropped),
        ignoring ``[GO]`` padding; ``[s]`` is a target. ``lengths`` is accepted for a uniform interface;
        ``label_smoothing`` (0: DTRB's loss) spreads that share of each target over the classes."""
        targets = targets[:, 1 : logits.size(1) + 1].to(logits.device)
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=GO_ID,
                               label_smoothing=label_smoothing)  # fmt: skip
