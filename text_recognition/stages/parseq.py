# Follows baudm/parseq (strhub; Copyright 2022 Darwin Bautista, Apache-2.0); see NOTICE.
"""Prediction stage ``PARSeq``: the permuted autoregressive sequence model of Bautista & Atienza (ECCV 2022).

A two-stream transformer decoder (after XLNet) reads the encoder's tokens (the memory) with learned position
queries. In training it is taught a few permutations of each label's factorisation order at once (permutation
language modelling); at inference it decodes autoregressively (``decode_ar``) or all positions at once, then
refines the whole output ``refine_iters`` times with cloze masks.

Ids are strhub's (``tokenizer.StrhubTokenizer``): ``[E]`` = 0, symbols 1..N, ``[B]`` = N + 1, ``[P]`` = N + 2; the
head predicts the N + 1 ids ``[E]`` and symbols, so its argmax can be fed straight back. Parameter names are strhub's
(``decoder.layers.0.self_attn.in_proj_weight``, ``head``, ``text_embed.embedding``, ``pos_queries``), so strhub
checkpoints load after prefixing ``Prediction.``.
"""

from __future__ import annotations

import math
from itertools import permutations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_stage
from ..tokenizer import STRHUB_EOS_ID
from .prediction import resize_rows

# For 4 characters and mirrored permutations: the lexicographic permutations (of 24) forming a half that holds no
# permutation together with its reverse, so that mirroring the sample never repeats one (strhub's selector).
_HALF_OF_4 = [0, 3, 4, 6, 9, 10, 12, 16, 17, 18, 19, 21]


class DecoderLayer(nn.Module):
    """One two-stream layer: pre-norm self-attention over the context (masked), cross-attention to the memory,
    and a GELU MLP. The query and content streams share every weight but ``norm_q`` / ``norm_c``."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm_q = nn.LayerNorm(d_model)
        self.norm_c = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward_stream(self, target: torch.Tensor, target_norm: torch.Tensor, context_norm: torch.Tensor,
                       memory: torch.Tensor, attn_mask: torch.Tensor | None,
                       key_padding_mask: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
        """One stream: ``target`` [B, L, D] attends to ``context_norm`` [B, S, D] (masks: True may not attend)."""
        attended = self.self_attn(target_norm, context_norm, context_norm, attn_mask=attn_mask,
                                  key_padding_mask=key_padding_mask, need_weights=False)[0]  # fmt: skip
        target = target + self.dropout1(attended)
        attended = self.cross_attn(self.norm1(target), memory, memory, need_weights=False)[0]
        target = target + self.dropout2(attended)
        hidden = self.linear2(self.dropout(F.gelu(self.linear1(self.norm2(target)))))
        return target + self.dropout3(hidden)

    def forward(self, query: torch.Tensor, content: torch.Tensor, memory: torch.Tensor,
                query_mask: torch.Tensor | None, content_mask: torch.Tensor | None,
                key_padding_mask: torch.Tensor | None,
                update_content: bool) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        content_norm = self.norm_c(content)
        query = self.forward_stream(query, self.norm_q(query), content_norm, memory, query_mask, key_padding_mask)
        if update_content:  # only a layer with a layer after it: the last one's content is never read
            content = self.forward_stream(content, content_norm, content_norm, memory, content_mask,
                                          key_padding_mask)  # fmt: skip
        return query, content


class Decoder(nn.Module):
    """``num_layers`` two-stream layers and a final LayerNorm of the query stream."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [DecoderLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(num_layers)]
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, query: torch.Tensor, content: torch.Tensor, memory: torch.Tensor,
                query_mask: torch.Tensor | None = None, content_mask: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        for i, layer in enumerate(self.layers):
            query, content = layer(query, content, memory, query_mask, content_mask, key_padding_mask,
                                   update_content=i + 1 < len(self.layers))  # fmt: skip
        return self.norm(query)


class TokenEmbedding(nn.Module):
    """Token embeddings scaled by sqrt(d_model) (every token, ``[B]`` included)."""

    def __init__(self, num_tokens: int, d_model: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_tokens, d_model)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return math.sqrt(self.embedding.embedding_dim) * self.embedding(ids)


@register_stage("prediction", "PARSeq")
class PARSeq(nn.Module):
    """The PARSeq decoder over memory [B, S, d_model] (the encoder's tokens).

    Args:
        d_model: width of the memory and of the decoder.
        num_classes: head outputs, ``[E]`` and the N symbols (N + 1); the embedding also has ``[B]`` and ``[P]``.
        batch_max_length: longest label (strhub's ``max_label_length``); ``batch_max_length + 1`` position queries.
        num_heads, depth, mlp_ratio, dropout: the decoder's heads, layers, MLP expansion and dropout.
        perm_num, perm_forward, perm_mirrored: training permutations per batch, whether the left-to-right order is
            always one of them, and whether each is paired with its reverse.
        decode_ar, refine_iters: the inference mode: autoregressive (else all positions at once), then this many
            cloze refinement passes.
    """

    #: training feeds the encoded labels to ``forward`` (permutation language modelling)
    teacher_forced = True

    def __init__(self, d_model: int, num_classes: int, batch_max_length: int = 25, num_heads: int = 12,
                 depth: int = 1, mlp_ratio: float = 4.0, dropout: float = 0.1, perm_num: int = 6,
                 perm_forward: bool = True, perm_mirrored: bool = True, decode_ar: bool = True,
                 refine_iters: int = 1) -> None:  # fmt: skip
        super().__init__()
        self.num_classes = num_classes
        self.eos_id, self.bos_id, self.pad_id = STRHUB_EOS_ID, num_classes, num_classes + 1
        self.batch_max_length = batch_max_length
        self.perm_num, self.perm_forward, self.perm_mirrored = perm_num, perm_forward, perm_mirrored
        self.decode_ar, self.refine_iters = decode_ar, refine_iters
        self.decoder = Decoder(d_model, num_heads, int(d_model * mlp_ratio), dropout, depth)
        self.head = nn.Linear(d_model, num_classes)
        self.text_embed = TokenEmbedding(num_classes + 2, d_model)
        self.pos_queries = nn.Parameter(torch.zeros(1, batch_max_length + 1, d_model))
        self.dropout = nn.Dropout(dropout)
        self.init_weights()

    @classmethod
    def from_config(cls, config, in_features: int) -> PARSeq:
        return cls(in_features, config.num_class, config.batch_max_length, config.decoder_heads,
                   config.decoder_depth, config.decoder_mlp_ratio, config.dropout, config.perm_num,
                   config.perm_forward, config.perm_mirrored, config.decode_ar, config.refine_iters)  # fmt: skip

    @torch.no_grad()
    def init_weights(self) -> None:
        """strhub's initialisation: linear layers (attention output projections too) and embeddings
        trunc-normal(0.02) with zero biases, LayerNorms 1 and 0, position queries trunc-normal(0.02); the attention
        input projections keep torch's xavier-uniform with zero bias."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.trunc_normal_(module.weight, std=0.02)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.MultiheadAttention):
                nn.init.xavier_uniform_(module.in_proj_weight)
                nn.init.zeros_(module.in_proj_bias)
        nn.init.trunc_normal_(self.pos_queries, std=0.02)

    def decode(self, context: torch.Tensor, memory: torch.Tensor, content_mask: torch.Tensor | None = None,
               key_padding_mask: torch.Tensor | None = None, query: torch.Tensor | None = None,
               query_mask: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Decoder output [B, L_q, d] for context ids [B, L] (``[B]`` first) and position queries [B, L_q, d]
        (default: the first L). Context token k >= 1 carries position k - 1; ``[B]`` has none (the null context)."""
        batch, length = context.shape
        null_context = self.text_embed(context[:, :1])
        content = self.pos_queries[:, : length - 1] + self.text_embed(context[:, 1:])
        content = self.dropout(torch.cat([null_context, content], dim=1))  # [B, L, d]
        if query is None:
            query = self.pos_queries[:, :length].expand(batch, -1, -1)
        return self.decoder(self.dropout(query), content, memory, query_mask, content_mask, key_padding_mask)

    def forward(self, memory: torch.Tensor, text: torch.Tensor | None = None, stop_at_eos: bool = True
                ) -> torch.Tensor:  # fmt: skip
        """Memory [B, S, d] -> logits.

        Args:
            memory: the encoder's tokens.
            text: training: the tokenizer's ``encode`` output [B, >= T + 2] (``[B]`` c1 .. cT ``[E]`` ``[P]`` ...);
                returns the logits of every permutation, [K, B, T + 1, num_classes] (T: the batch's longest label),
                for ``loss``. ``None``: decode as ``decode_ar`` / ``refine_iters`` say.
            stop_at_eos: autoregressive decoding stops once every row has produced ``[E]`` (strhub's test-time
                forward), so the logits have that many steps (at most ``batch_max_length + 1``). ``False`` runs every
                step, as the ONNX export does (the steps after a row's ``[E]`` are never read). Refinement always
                returns ``batch_max_length + 1`` rows.
        """
        if text is not None:
            return self.permutation_logits(memory, text)
        return self.generate(memory, stop_at_eos)

    def _causal(self, device: torch.device) -> torch.Tensor:
        """True: may not attend. Slot i sees [B] and the characters before its own."""
        num_steps = self.batch_max_length + 1
        return torch.triu(torch.ones(num_steps, num_steps, dtype=torch.bool, device=device), 1)

    def generate(self, memory: torch.Tensor, stop_at_eos: bool = True) -> torch.Tensor:
        """strhub's inference: logits [B, steps, num_classes]."""
        batch, num_steps = memory.size(0), self.batch_max_length + 1
        if self.decode_ar:
            ids = torch.zeros((batch, 0), dtype=torch.long, device=memory.device)  # the characters decoded so far
            steps = []
            for i in range(num_steps):
                step = self.step_logits(memory, ids)  # [B, C]
                steps.append(step)
                if i + 1 < num_steps:
                    ids = torch.cat([ids, step.argmax(-1, keepdim=True)], dim=1)
                    if stop_at_eos and bool((ids == self.eos_id).any(dim=-1).all()):  # every row has ended
                        break
            logits = torch.stack(steps, dim=1)
        else:
            context = torch.full((batch, 1), self.bos_id, dtype=torch.long, device=memory.device)
            queries = self.pos_queries[:, :num_steps].expand(batch, -1, -1)
            logits = self.head(self.decode(context, memory, query=queries))
        return self.refine(memory, logits)

    def refine(self, memory: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``refine_iters`` cloze passes over the reading of ``logits`` [B, steps, C] -> [B, batch_max_length + 1,
        C] (``logits`` as they are when ``refine_iters`` is 0)."""
        if not self.refine_iters:
            return logits
        batch, device = memory.size(0), memory.device
        causal = self._causal(device)
        pos_queries = self.pos_queries[:, : causal.size(0)].expand(batch, -1, -1)
        # Cloze: slot r sees every context token but its own character (context index r + 1).
        cloze = causal & ~torch.triu(torch.ones_like(causal), 2)
        bos = torch.full((batch, 1), self.bos_id, dtype=torch.long, device=device)
        for _ in range(self.refine_iters):
            context = torch.cat([bos, logits[:, :-1].argmax(-1)], dim=1)  # the last row predicts nothing fed
            length = context.size(1)
            padding = (context == self.eos_id).int().cumsum(-1) > 0  # the first [E] and what follows
            logits = self.head(self.decode(context, memory, cloze[:length, :length], padding, pos_queries,
                                           cloze[:, :length]))  # fmt: skip
        return logits

    def forced(self, memory: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The autoregressive logits [B, L, C] along a given reading ``ids`` [B, L] (L <= batch_max_length + 1),
        in one pass: step i sees ``[B]`` and ``ids[:, :i]``, as the autoregressive loop would have fed them.
        No refinement. The parity check of an export uses it to follow the path onnxruntime took."""
        batch, length = ids.shape
        causal = self._causal(memory.device)[:length, :length]
        context = torch.cat([ids.new_full((batch, 1), self.bos_id), ids[:, :-1]], dim=1)
        query = self.pos_queries[:, :length].expand(batch, -1, -1)
        return self.head(self.decode(context, memory, causal, query=query, query_mask=causal))

    def step_logits(self, memory: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """The next symbol's logits [B, C] after ``prefix`` [B, i] (the characters read so far, i may be 0):
        the autoregressive step i (of ``generate``, and of beam search)."""
        batch, i = prefix.shape
        j = i + 1
        causal = self._causal(memory.device)
        context = torch.cat([prefix.new_full((batch, 1), self.bos_id), prefix], dim=1)
        query = self.pos_queries[:, i:j].expand(batch, -1, -1)
        return self.head(self.decode(context, memory, causal[:j, :j], query=query, query_mask=causal[i:j, :j]))[:, 0]

    @torch.no_grad()
    def resize_classes(self, sources: list[int | None], margin: float) -> None:
        """New classes ``[E]`` + symbols, row i taken from old class ``sources[i]`` (``None``: a new symbol). A new
        symbol's head row is ``[E]``'s with its bias lowered by ``margin`` (never the argmax), its embedding the mean
        of the old symbols'; ``[B]`` and ``[P]`` keep their rows, at the new end of the table."""
        old_count = self.num_classes
        resize_rows(self.head, sources, STRHUB_EOS_ID, margin)
        embedding = self.text_embed.embedding
        weight = embedding.weight
        mean = weight[1:old_count].mean(dim=0, keepdim=True)
        rows = [mean if k is None else weight[k : k + 1] for k in sources] + [weight[old_count : old_count + 2]]
        embedding.weight = nn.Parameter(torch.cat(rows).clone(), requires_grad=weight.requires_grad)
        embedding.num_embeddings = len(sources) + 2
        self.num_classes, self.bos_id, self.pad_id = len(sources), len(sources), len(sources) + 1

    # ---- training: permutation language modelling ------------------------------------------------------------

    def permutation_logits(self, memory: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Logits [K, B, T + 1, C] of the K permutations of ``gen_permutations`` for the labels ``text``."""
        text = text.to(memory.device)
        longest = int((text != self.pad_id).sum(1).max()) - 2  # T: characters of the longest label
        target = text[:, : longest + 2]
        context = target[:, :-1]
        padding = (context == self.pad_id) | (context == self.eos_id)
        logits = []
        for permutation in self.gen_permutations(longest, memory.device):
            content_mask, query_mask = self.attention_masks(permutation)
            logits.append(self.head(self.decode(context, memory, content_mask, padding, query_mask=query_mask)))
        return torch.stack(logits)

    def gen_permutations(self, length: int, device: torch.device) -> torch.Tensor:
        """Factorisation orders over [B] c1 .. cT [E] as position indices [K, T + 2] ([B] first, [E] last).

        The left-to-right order first (``perm_forward``), then orders drawn with torch's generator (so seeded runs
        repeat), each followed by its reverse (``perm_mirrored``). The second order is always the right-to-left
        one with a null context for ``[E]`` (it sees only ``[B]``), which the all-at-once decoding needs.
        """
        if length <= 1:
            return torch.arange(3, device=device).unsqueeze(0)
        perms = [torch.arange(length, device=device)] if self.perm_forward else []
        max_perms = math.factorial(length)
        if self.perm_mirrored:
            max_perms //= 2
        max_gen = self.perm_num // 2 if self.perm_mirrored else self.perm_num
        num_gen = min(max_gen, max_perms)
        if length < 5:
            # Few orders exist: sample without replacement from (the first half of) all of them.
            selector = _HALF_OF_4 if length == 4 and self.perm_mirrored else list(range(max_perms))
            pool = torch.as_tensor(list(permutations(range(length), length)), device=device)[selector]
            if self.perm_forward:
                pool = pool[1:]  # the identity is already in
            chosen = pool[torch.randperm(len(pool))[: num_gen - len(perms)].to(device)]
            perms = torch.cat([torch.stack(perms), chosen]) if perms else chosen
        else:
            perms += [torch.randperm(length, device=device) for _ in range(num_gen - len(perms))]
            perms = torch.stack(perms)
        if self.perm_mirrored:
            perms = torch.stack([perms, perms.flip(-1)]).transpose(0, 1).reshape(-1, length)  # [p0, rev p0, ...]
        bos = perms.new_zeros(len(perms), 1)
        eos = perms.new_full((len(perms), 1), length + 1)
        perms = torch.cat([bos, perms + 1, eos], dim=1)
        if len(perms) > 1:
            perms[1, 1:] = length + 1 - torch.arange(length + 1, device=device)  # [E] cT .. c1: [E] sees only [B]
        return perms

    @staticmethod
    def attention_masks(permutation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(content mask [T+1, T+1], query mask [T+1, T+1]) of one order (True: may not attend): a position
        never sees those after it in the order; a query slot never sees its own character either."""
        size = permutation.size(0)
        mask = torch.zeros(size, size, dtype=torch.bool, device=permutation.device)
        for i in range(size):
            mask[permutation[i], permutation[i + 1 :]] = True
        content_mask = mask[:-1, :-1].clone()
        mask[torch.eye(size, dtype=torch.bool, device=permutation.device)] = True
        return content_mask, mask[1:, :-1]

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor | None = None
             ) -> torch.Tensor:  # fmt: skip
        """Cross-entropy, a token-weighted mean over the permutations, of ``permutation_logits`` [K, B, T+1, C]
        against the encoded ``targets`` [B, >= T + 2] (``[P]`` ignored). ``[E]`` is a target of the first two
        orders only (full and null context). Decoded logits [B, steps, C] (validation) are scored against the
        first ``steps`` targets. ``lengths`` is accepted for the common interface."""
        if logits.dim() == 3:
            logits = logits.unsqueeze(0)
        targets = targets.to(logits.device)[:, 1 : logits.size(2) + 1]
        if targets.size(1) < logits.size(2):  # decoded rows past the longest label: their target is padding
            targets = F.pad(targets, (0, logits.size(2) - targets.size(1)), value=self.pad_id)
        total, count = logits.new_zeros((), dtype=torch.float32), 0
        for k in range(logits.size(0)):
            if k == 2:
                targets = torch.where(targets == self.eos_id, self.pad_id, targets)
            total = total + F.cross_entropy(logits[k].float().flatten(0, 1), targets.flatten(),
                                            ignore_index=self.pad_id, reduction="sum")  # fmt: skip
            count = count + (targets != self.pad_id).sum()
        return total / count.clamp(min=1)
