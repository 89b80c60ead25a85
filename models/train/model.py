"""MiniLM (BERT, 6 layers, 384 wide) with the rulegate heads, written out so that the
attention mask is ours: prompt tokens (type 0) never attend to completion tokens (type 1).

One forward pass gives proposition_logits [B,23], response_type_logits [B,4], prm_logit [B,1].
Inputs are only input_ids, attention_mask, token_type_ids (int64); the [B,1,T,T] mask is
built inside the graph.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

HIDDEN, LAYERS, HEADS, FFN, EPS, MAX_POS, VOCAB = 384, 6, 12, 1536, 1e-12, 512, 30522
HEAD_PREFIXES = ("prop_head", "prm_head", "rt_head", "c_att", "p_att")
NEG = -1e4  # additive mask value; exp(-1e4) underflows to exactly 0 in fp32


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(HIDDEN, HIDDEN)
        self.k = nn.Linear(HIDDEN, HIDDEN)
        self.v = nn.Linear(HIDDEN, HIDDEN)
        self.o = nn.Linear(HIDDEN, HIDDEN)
        self.ln1 = nn.LayerNorm(HIDDEN, eps=EPS)
        self.ff1 = nn.Linear(HIDDEN, FFN)
        self.ff2 = nn.Linear(FFN, HIDDEN)
        self.ln2 = nn.LayerNorm(HIDDEN, eps=EPS)
        self.drop = nn.Dropout(0.1)

    def forward(self, x, bias):
        b, t, _ = x.shape
        hd = HIDDEN // HEADS

        def split(y):
            return y.view(b, t, HEADS, hd).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(hd)) + bias
        att = self.drop(torch.softmax(att, dim=-1))
        ctx = torch.matmul(att, v).transpose(1, 2).reshape(b, t, HIDDEN)
        x = self.ln1(x + self.drop(self.o(ctx)))
        return self.ln2(x + self.drop(self.ff2(F.gelu(self.ff1(x)))))


def _mlp(d_in, d_out, hidden=384, p=0.1):
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(p), nn.Linear(hidden, d_out))


class RuleGateModel(nn.Module):
    def __init__(self, n_props=23, n_rt=4):
        super().__init__()
        self.word = nn.Embedding(VOCAB, HIDDEN)
        self.pos = nn.Embedding(MAX_POS, HIDDEN)
        self.ttype = nn.Embedding(2, HIDDEN)
        self.emb_ln = nn.LayerNorm(HIDDEN, eps=EPS)
        self.emb_drop = nn.Dropout(0.1)
        self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))
        # Propositions and PRM read [completion mean, max, attention pool, prompt mean];
        # the response type reads [CLS, prompt mean, prompt attention pool]: all three are
        # functions of the prompt tokens only. Attention pools start as plain means.
        self.c_att = nn.Linear(HIDDEN, 1)
        self.p_att = nn.Linear(HIDDEN, 1)
        for lin in (self.c_att, self.p_att):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.prop_head = _mlp(4 * HIDDEN, n_props)
        self.prm_head = _mlp(4 * HIDDEN, 1)
        self.rt_head = _mlp(3 * HIDDEN, n_rt)
        # Temperature scaling (fit on validation), folded into the exported logits.
        self.register_buffer("t_prop", torch.ones(n_props))
        self.register_buffer("t_rt", torch.ones(1))
        self.register_buffer("t_prm", torch.ones(1))

    # -- encoder -----------------------------------------------------------
    def encode(self, input_ids, attention_mask, token_type_ids):
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device).unsqueeze(0)
        x = self.word(input_ids) + self.pos(pos) + self.ttype(token_type_ids)
        x = self.emb_drop(self.emb_ln(x))
        valid = attention_mask > 0
        is_c = token_type_ids > 0
        # query i may see key j iff j is a real token and (i is completion or j is prompt)
        allowed = valid.unsqueeze(1) & (is_c.unsqueeze(2) | (~is_c).unsqueeze(1))
        bias = torch.where(allowed, 0.0, NEG).to(x.dtype).unsqueeze(1)  # [B,1,T,T]
        for layer in self.layers:
            x = layer(x, bias)
        return x

    def features(self, input_ids, attention_mask, token_type_ids):
        h = self.encode(input_ids, attention_mask, token_type_ids)
        valid = (attention_mask > 0).to(h.dtype).unsqueeze(-1)
        cm = valid * (token_type_ids > 0).to(h.dtype).unsqueeze(-1)  # completion incl. last [SEP]
        pm = valid * (token_type_ids == 0).to(h.dtype).unsqueeze(-1)  # [CLS] prompt [SEP]
        c_mean = (h * cm).sum(1) / cm.sum(1).clamp(min=1.0)
        c_max = (h * cm + (1.0 - cm) * NEG).max(dim=1).values
        p_mean = (h * pm).sum(1) / pm.sum(1).clamp(min=1.0)
        c_attn = self._attn_pool(h, cm, self.c_att)
        p_attn = self._attn_pool(h, pm, self.p_att)
        return torch.cat([c_mean, c_max, c_attn, p_mean], -1), torch.cat([h[:, 0], p_mean, p_attn], -1)

    @staticmethod
    def _attn_pool(h, m, lin):
        w = torch.softmax(lin(h) + (1.0 - m) * NEG, dim=1)  # [B,T,1], zero outside the mask
        return (w * h).sum(1)

    def forward(self, input_ids, attention_mask, token_type_ids):
        pair, prompt = self.features(input_ids, attention_mask, token_type_ids)
        props = self.prop_head(pair) / self.t_prop
        rt = self.rt_head(prompt) / self.t_rt
        prm = self.prm_head(pair) / self.t_prm
        return props, rt, prm

    # -- weights -----------------------------------------------------------
    def load_minilm(self, safetensors_path: str):
        from safetensors.torch import load_file
        w = load_file(safetensors_path)
        m = {
            "word.weight": "embeddings.word_embeddings.weight",
            "pos.weight": "embeddings.position_embeddings.weight",
            "ttype.weight": "embeddings.token_type_embeddings.weight",
            "emb_ln.weight": "embeddings.LayerNorm.weight",
            "emb_ln.bias": "embeddings.LayerNorm.bias",
        }
        for i in range(LAYERS):
            p = f"encoder.layer.{i}."
            for ours, theirs in [("q", "attention.self.query"), ("k", "attention.self.key"),
                                 ("v", "attention.self.value"), ("o", "attention.output.dense"),
                                 ("ln1", "attention.output.LayerNorm"), ("ff1", "intermediate.dense"),
                                 ("ff2", "output.dense"), ("ln2", "output.LayerNorm")]:
                for s in ("weight", "bias"):
                    m[f"layers.{i}.{ours}.{s}"] = p + theirs + "." + s
        sd = {k: w[v] for k, v in m.items()}
        missing, unexpected = self.load_state_dict(sd, strict=False)
        assert not unexpected, unexpected
        assert all(k.startswith(HEAD_PREFIXES + ("t_prop", "t_rt", "t_prm")) for k in missing), missing
        return self

    def encoder_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith(HEAD_PREFIXES)]

    def head_parameters(self):
        return [p for n, p in self.named_parameters() if n.startswith(HEAD_PREFIXES)]
