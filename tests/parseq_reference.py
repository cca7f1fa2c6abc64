"""Independent, test-side reference implementation of strhub's PARSeq and ViTSTR maths (baudm/parseq at 1902db0).

Written from ``/work/shared/reference/parseq.md`` alone (sections 4 to 6 and 8): the timm ViT encoder, the two-stream
PARSeq decoder with its autoregressive, non-autoregressive and refinement decoding, and strhub's ViTSTR forward. It
shares no code with the ``text_recognition`` package and uses only ``torch.nn.functional``-level operations, with
attention written out (packed projections split by hand, explicit softmax), so that the two can be checked against
each other.

Contents:

* :func:`strhub_manifest`: the key -> shape mapping of a strhub state dict (PARSeq keys without prefix, as the
  released ``.pt`` files; ViTSTR keys with the ``model.`` prefix of its system).
* :func:`random_strhub_state_dict`: deterministic, numerically sane random weights for a manifest.
* :func:`reference_encoder`, :func:`reference_parseq_forward`, :func:`reference_vitstr_forward`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ENCODER_LN_EPS = 1e-6  # timm (note 4)
DECODER_LN_EPS = 1e-5  # torch LayerNorm (note 5.1)


# ---- manifests and random weights ----------------------------------------------------------------------------------


def _encoder_manifest(prefix: str, d: int, depth: int, mlp: int, patch: tuple[int, int], tokens: int,
                      channels: int = 3) -> dict[str, tuple[int, ...]]:  # fmt: skip
    m = {
        f"{prefix}pos_embed": (1, tokens, d),
        f"{prefix}patch_embed.proj.weight": (d, channels, *patch),
        f"{prefix}patch_embed.proj.bias": (d,),
    }
    for i in range(depth):
        b = f"{prefix}blocks.{i}."
        m.update({
            b + "norm1.weight": (d,), b + "norm1.bias": (d,),
            b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
            b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
            b + "norm2.weight": (d,), b + "norm2.bias": (d,),
            b + "mlp.fc1.weight": (mlp, d), b + "mlp.fc1.bias": (mlp,),
            b + "mlp.fc2.weight": (d, mlp), b + "mlp.fc2.bias": (d,),
        })  # fmt: skip
    m[f"{prefix}norm.weight"] = (d,)
    m[f"{prefix}norm.bias"] = (d,)
    return m


def strhub_manifest(architecture: str, *, embed_dim: int = 384, depth: int = 12, mlp_ratio: int = 4,
                    dec_depth: int = 1, dec_mlp_ratio: int = 4, patch: tuple[int, int] = (4, 8),
                    img_size: tuple[int, int] = (32, 128), num_symbols: int = 94,
                    max_label_length: int = 25) -> dict[str, tuple[int, ...]]:  # fmt: skip
    """Key -> shape of a strhub ``parseq`` or ``vitstr`` state dict (note 4, 5.1 and 8)."""
    d = embed_dim
    patches = (img_size[0] // patch[0]) * (img_size[1] // patch[1])
    if architecture == "vitstr":
        m = {"model.cls_token": (1, 1, d)}
        m.update(_encoder_manifest("model.", d, depth, mlp_ratio * d, patch, patches + 1))
        m["model.head.weight"] = (num_symbols + 1, d)
        m["model.head.bias"] = (num_symbols + 1,)
        return m
    m = _encoder_manifest("encoder.", d, depth, mlp_ratio * d, patch, patches)
    for j in range(dec_depth):
        layer = f"decoder.layers.{j}."
        for attn in ("self_attn", "cross_attn"):
            m.update({
                f"{layer}{attn}.in_proj_weight": (3 * d, d), f"{layer}{attn}.in_proj_bias": (3 * d,),
                f"{layer}{attn}.out_proj.weight": (d, d), f"{layer}{attn}.out_proj.bias": (d,),
            })  # fmt: skip
        m.update({
            layer + "linear1.weight": (dec_mlp_ratio * d, d), layer + "linear1.bias": (dec_mlp_ratio * d,),
            layer + "linear2.weight": (d, dec_mlp_ratio * d), layer + "linear2.bias": (d,),
        })  # fmt: skip
        for norm in ("norm1", "norm2", "norm_q", "norm_c"):
            m[f"{layer}{norm}.weight"] = (d,)
            m[f"{layer}{norm}.bias"] = (d,)
    m.update({
        "decoder.norm.weight": (d,), "decoder.norm.bias": (d,),
        "head.weight": (num_symbols + 1, d), "head.bias": (num_symbols + 1,),
        "text_embed.embedding.weight": (num_symbols + 3, d),
        "pos_queries": (1, max_label_length + 1, d),
    })  # fmt: skip
    return m


def random_strhub_state_dict(manifest: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with sane scales: LayerNorm weights near 1, matrices ~ 1/sqrt(fan_in), the head larger so that
    the classes are well apart (greedy paths without near-ties)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in manifest.items():
        x = torch.randn(shape, generator=generator)
        name = key.rsplit(".", 1)[-1]
        if "norm" in key and name == "weight":
            value = 1.0 + 0.1 * x
        elif name in ("bias", "in_proj_bias"):
            value = 0.1 * x
        elif key.endswith("head.weight"):
            value = 2.0 * x / math.sqrt(shape[1])
        elif len(shape) >= 2 and name in ("weight", "in_proj_weight"):
            fan_in = math.prod(shape[1:])
            value = x / math.sqrt(fan_in)
        else:  # pos_embed, pos_queries, cls_token, embeddings
            value = 0.5 * x
        state[key] = value.float()
    return state


# ---- building blocks ---------------------------------------------------------------------------------------------


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return x @ weight.T + bias


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))  # exact GELU


def _attention(q_in, k_in, v_in, w, b, w_out, b_out, heads, blocked=None):
    """Multi-head attention with packed projection rows [W_q; W_k; W_v]. ``blocked`` [B or 1, Lq, Lk]: True where a
    query may not attend."""
    d = q_in.shape[-1]
    dh = d // heads
    q = _linear(q_in, w[:d], b[:d])
    k = _linear(k_in, w[d : 2 * d], b[d : 2 * d])
    v = _linear(v_in, w[2 * d :], b[2 * d :])
    B, Lq, Lk = q.shape[0], q.shape[1], k.shape[1]
    q = q.reshape(B, Lq, heads, dh).transpose(1, 2)
    k = k.reshape(B, Lk, heads, dh).transpose(1, 2)
    v = v.reshape(B, Lk, heads, dh).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)  # [B, h, Lq, Lk]
    if blocked is not None:
        scores = scores.masked_fill(blocked[:, None], float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    return _linear(out.transpose(1, 2).reshape(B, Lq, d), w_out, b_out)


# ---- encoder (note 4) --------------------------------------------------------------------------------------------


def reference_encoder(state: dict[str, torch.Tensor], prefix: str, images: torch.Tensor, heads: int,
                      class_token: bool = False) -> torch.Tensor:  # fmt: skip
    """timm's ViT forward_features: patch conv, (class token,) + positions, pre-LN blocks, final LN (eps 1e-6)."""
    s = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    weight = s["patch_embed.proj.weight"]
    x = F.conv2d(images, weight, s["patch_embed.proj.bias"], stride=tuple(weight.shape[2:]))
    x = x.flatten(2).transpose(1, 2)  # [B, N, d], row-major
    if class_token:
        x = torch.cat([s["cls_token"].expand(x.shape[0], -1, -1), x], dim=1)
    x = x + s["pos_embed"]
    i = 0
    while f"blocks.{i}.norm1.weight" in s:
        p = f"blocks.{i}."
        h = _layer_norm(x, s[p + "norm1.weight"], s[p + "norm1.bias"], ENCODER_LN_EPS)
        w, b = s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"]
        x = x + _attention(h, h, h, w, b, s[p + "attn.proj.weight"], s[p + "attn.proj.bias"], heads)
        h = _layer_norm(x, s[p + "norm2.weight"], s[p + "norm2.bias"], ENCODER_LN_EPS)
        x = x + _linear(_gelu(_linear(h, s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"])),
                        s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"])  # fmt: skip
        i += 1
    return _layer_norm(x, s["norm.weight"], s["norm.bias"], ENCODER_LN_EPS)


# ---- PARSeq decoder (note 5, 6) ----------------------------------------------------------------------------------


def _stream(s, p, target, target_norm, context_norm, memory, heads, blocked):
    """One stream of a decoder layer (note 5.2)."""
    target = target + _attention(target_norm, context_norm, context_norm, s[p + "self_attn.in_proj_weight"],
                                 s[p + "self_attn.in_proj_bias"], s[p + "self_attn.out_proj.weight"],
                                 s[p + "self_attn.out_proj.bias"], heads, blocked)  # fmt: skip
    h = _layer_norm(target, s[p + "norm1.weight"], s[p + "norm1.bias"], DECODER_LN_EPS)
    target = target + _attention(h, memory, memory, s[p + "cross_attn.in_proj_weight"],
                                 s[p + "cross_attn.in_proj_bias"], s[p + "cross_attn.out_proj.weight"],
                                 s[p + "cross_attn.out_proj.bias"], heads)  # fmt: skip
    h = _layer_norm(target, s[p + "norm2.weight"], s[p + "norm2.bias"], DECODER_LN_EPS)
    return target + _linear(_gelu(_linear(h, s[p + "linear1.weight"], s[p + "linear1.bias"])),
                            s[p + "linear2.weight"], s[p + "linear2.bias"])  # fmt: skip


def _decode(s, context, memory, heads, query, query_blocked=None, content_blocked=None, padding=None):
    """Decoder logits [B, Lq, C] for context ids [B, L] ([B] first) and position queries [B, Lq, d].

    ``query_blocked`` [Lq, L] / ``content_blocked`` [L, L]: True where a slot may not see a context token;
    ``padding`` [B, L]: context tokens no one sees."""
    d = memory.shape[-1]
    table = s["text_embed.embedding.weight"]
    pos = s["pos_queries"][0]
    embedded = math.sqrt(d) * table[context]  # every token scaled, [B] included (note pitfall 2)
    content = embedded.clone()
    content[:, 1:] = content[:, 1:] + pos[: context.shape[1] - 1]  # token k carries position k - 1; [B] none
    B = context.shape[0]

    def blocked(mask, rows):
        out = torch.zeros(B, rows, context.shape[1], dtype=torch.bool)
        if mask is not None:
            out |= mask[None]
        if padding is not None:
            out |= padding[:, None, :]
        return out

    layers = 0
    while f"decoder.layers.{layers}.norm_q.weight" in s:
        layers += 1
    for j in range(layers):
        p = f"decoder.layers.{j}."
        content_norm = _layer_norm(content, s[p + "norm_c.weight"], s[p + "norm_c.bias"], DECODER_LN_EPS)
        query_norm = _layer_norm(query, s[p + "norm_q.weight"], s[p + "norm_q.bias"], DECODER_LN_EPS)
        new_query = _stream(s, p, query, query_norm, content_norm, memory, heads,
                            blocked(query_blocked, query.shape[1]))  # fmt: skip
        if j + 1 < layers:  # the content stream runs only when another layer reads it (note 5.2)
            content = _stream(s, p, content, content_norm, content_norm, memory, heads,
                              blocked(content_blocked, content.shape[1]))  # fmt: skip
        query = new_query
    out = _layer_norm(query, s["decoder.norm.weight"], s["decoder.norm.bias"], DECODER_LN_EPS)
    return _linear(out, s["head.weight"], s["head.bias"])


def reference_parseq_forward(state: dict[str, torch.Tensor], images: torch.Tensor, *, decode_ar: bool = True,
                             refine_iters: int = 1, enc_heads: int, dec_heads: int) -> torch.Tensor:  # fmt: skip
    """strhub's ``PARSeq.forward(tokenizer, images)`` at test time (no ``max_length``), note 6."""
    memory = reference_encoder(state, "encoder.", images, enc_heads)
    pos = state["pos_queries"][0]
    n = pos.shape[0]  # max_label_length + 1
    num_symbols = state["head.weight"].shape[0] - 1
    eos, bos = 0, num_symbols + 1
    B = images.shape[0]
    if decode_ar:
        context = torch.full((B, 1), bos, dtype=torch.long)
        steps = []
        for i in range(n):
            # slot i sees [B] and the i characters before it: no query mask; the content sees causally
            causal = torch.ones(i + 1, i + 1).triu(1).bool()
            step = _decode(state, context, memory, dec_heads, pos[i : i + 1].expand(B, -1, -1),
                           content_blocked=causal)  # fmt: skip
            steps.append(step)
            if i + 1 < n:
                context = torch.cat([context, step.argmax(-1)], dim=1)
                if bool((context == eos).any(dim=1).all()):
                    break  # at test time AR stops once every row has an [E]
        logits = torch.cat(steps, dim=1)
    else:
        context = torch.full((B, 1), bos, dtype=torch.long)
        logits = _decode(state, context, memory, dec_heads, pos.expand(B, -1, -1))
    for _ in range(refine_iters):
        context = torch.cat([torch.full((B, 1), bos, dtype=torch.long), logits[:, :-1].argmax(-1)], dim=1)
        length = context.shape[1]
        slots = torch.arange(n)[:, None]
        columns = torch.arange(length)[None, :]
        cloze = columns == slots + 1  # slot r does not see its own character, context index r + 1
        padding = torch.cumsum((context == eos).int(), dim=1) > 0  # the first [E] and everything after it
        content_cloze = cloze[:length, :length]
        logits = _decode(state, context, memory, dec_heads, pos.expand(B, -1, -1), query_blocked=cloze,
                         content_blocked=content_cloze, padding=padding)  # fmt: skip
    return logits


def reference_parseq_permutation_logits(state: dict[str, torch.Tensor], images: torch.Tensor,
                                        target: torch.Tensor, order: list[int], *, enc_heads: int,
                                        dec_heads: int) -> torch.Tensor:  # fmt: skip
    """Logits [B, T + 1, C] of one training order (note 7): ``target`` [B, T + 2] is [B] c1..cT [E] [P]...; ``order``
    a permutation of 0..T+1 starting with 0 ([B]) and ending with T + 1 ([E])."""
    memory = reference_encoder(state, "encoder.", images, enc_heads)
    num_symbols = state["head.weight"].shape[0] - 1
    eos, pad = 0, num_symbols + 2
    size = len(order)
    rank = {position: r for r, position in enumerate(order)}
    # position a may see position b iff b comes before a in the order (content: itself too)
    sees = torch.tensor([[rank[b] < rank[a] for b in range(size)] for a in range(size)])
    content_blocked = ~(sees | torch.eye(size, dtype=torch.bool))[:-1, :-1]
    query_blocked = ~sees[1:, :-1]
    context = target[:, :-1]
    padding = (context == pad) | (context == eos)
    pos = state["pos_queries"][0]
    return _decode(state, context, memory, dec_heads, pos[: size - 1].expand(target.shape[0], -1, -1),
                   query_blocked=query_blocked, content_blocked=content_blocked, padding=padding)  # fmt: skip


# ---- ViTSTR (note 8) ---------------------------------------------------------------------------------------------


def reference_vitstr_forward(state: dict[str, torch.Tensor], images: torch.Tensor, *, heads: int,
                             max_label_length: int = 25) -> torch.Tensor:  # fmt: skip
    """strhub's ViTSTR system at test time: the first max_label_length + 2 tokens, the head, the first dropped."""
    tokens = reference_encoder(state, "model.", images, heads, class_token=True)
    logits = _linear(tokens[:, : max_label_length + 2], state["model.head.weight"], state["model.head.bias"])
    return logits[:, 1:]
