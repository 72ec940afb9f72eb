"""The three published GPT-OSS checkpoint layouts, as plans that fill our parameter pytree.

    hf           Hugging Face, bf16/f32: ``model.layers.N.self_attn.q_proj.weight``, fused experts
                 ``mlp.experts.gate_up_proj`` [E, D, 2I] (in × out), ``down_proj`` [E, I, D].
    hf-mxfp4     the published ``openai/gpt-oss-20b`` root: as ``hf`` but the experts are
                 ``gate_up_proj_blocks`` u8 [E, 2I, D/32, 16] + ``_scales`` [E, 2I, D/32] (out × in),
                 ``down_proj_blocks`` [E, D, I/32, 16] + ``_scales``; ``quantization_config`` in config.json.
    original     OpenAI ``original/``: ``block.N.attn.qkv`` (rows q | k | v), ``attn.out``, ``attn.sinks``,
                 ``attn.norm.scale``, ``mlp.norm.scale``, ``mlp.gate``, ``mlp.mlp1_weight.blocks/.scales``
                 [E, 2I, D/32, 16] (gate/up rows interleaved), ``mlp1_bias``, ``mlp.mlp2_weight.*``
                 [E, D, I/32, 16], ``mlp2_bias``, ``embedding``, ``unembedding``, ``norm.scale``. Experts
                 may also be dense (``mlp.mlp1_weight`` [E, 2I, D], as ``export --format original`` writes).

A plan is a list of ``Job``s. A job names the source tensors it consumes and, run against a reader,
yields pieces ``(leaf path, index or None, array)``: whole leaves, or one expert / one block of vocab
rows at a time, so no job holds more than one large tensor's slice (see ``converters/gpt_oss.py``).
Expert weights are transposed from out × in (the quantized layouts) to our in × out.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import numpy as np

from converters import mxfp4
from pdt_jax.trunk.config import TrunkConfig
from pdt_jax.trunk.hf_layout import TensorMap, tensor_maps

ROW_CHUNK_BYTES = 64 << 20
FLOAT, U8 = "float", "u8"
FLOAT_DTYPES = ("F32", "BF16", "F16")

Piece = tuple[str, "tuple | None", np.ndarray]


@dataclasses.dataclass(frozen=True)
class Expect:
    name: str
    shape: tuple[int, ...]
    kind: str  # FLOAT or U8


@dataclasses.dataclass
class Job:
    inputs: tuple[Expect, ...]
    run: Callable[[Callable], Iterator[Piece]]  # run(read) with read(name, start=None, stop=None)


def leaf(path: tuple) -> str:
    return "/".join(str(p) for p in path)


# ---- generic jobs -------------------------------------------------------------------------------

def whole(src: Expect, path: tuple, to_ours=lambda x: x) -> Job:
    return Job((src,), lambda read: iter([(leaf(path), None, to_ours(read(src.name)))]))


def vocab_rows(src: Expect, path: tuple, transposed: bool) -> Job:
    """[V, D] read in blocks of rows: to ``path`` rows (embedding) or columns (unembedding [D, V])."""
    def run(read):
        V, D = src.shape
        step = max(1, ROW_CHUNK_BYTES // (4 * D))
        for a in range(0, V, step):
            b = min(V, a + step)
            rows = read(src.name, a, b)
            yield (leaf(path), (slice(None), slice(a, b)), rows.T) if transposed else (leaf(path), (slice(a, b),), rows)
    return Job((src,), run)


def experts_dense(src: Expect, path: tuple, out_by_in: bool) -> Job:
    """[E, a, b] one expert at a time; ``out_by_in`` sources are transposed to our in × out."""
    def run(read):
        for e in range(src.shape[0]):
            w = read(src.name, e, e + 1)[0]
            yield leaf(path), (e,), (w.T if out_by_in else w)
    return Job((src,), run)


def experts_mxfp4(blocks: Expect, scales: Expect, path: tuple) -> Job:
    """blocks [E, out, G, 16] + scales [E, out, G] → our [E, in, out], one expert at a time."""
    def run(read):
        for e in range(blocks.shape[0]):
            w = mxfp4.dequantize(read(blocks.name, e, e + 1)[0], read(scales.name, e, e + 1)[0])
            yield leaf(path), (e,), w.T
    return Job((blocks, scales), run)


def mxfp4_expect(name: str, sep: str, E: int, out: int, inp: int) -> tuple[Expect, Expect]:
    G = inp // mxfp4.BLOCK
    return Expect(f"{name}{sep}blocks", (E, out, G, 16), U8), Expect(f"{name}{sep}scales", (E, out, G), U8)


# ---- Hugging Face (dense and MXFP4) -------------------------------------------------------------

def hf_plan(cfg: TrunkConfig, quantized: bool) -> list[Job]:
    E, I, D = cfg.num_experts, cfg.intermediate_size, cfg.hidden_size
    jobs = []
    for m in tensor_maps(cfg):
        src = Expect(m.hf_name, m.hf_shape, FLOAT)
        field = m.path[-1]
        if field == "embed":
            jobs.append(vocab_rows(src, m.path, transposed=False))
        elif field == "unembed":
            jobs.append(vocab_rows(src, m.path, transposed=True))
        elif field in ("gate_up", "down") and quantized:
            out, inp = (2 * I, D) if field == "gate_up" else (D, I)
            jobs.append(experts_mxfp4(*mxfp4_expect(m.hf_name, "_", E, out, inp), m.path))
        elif field in ("gate_up", "down"):
            jobs.append(experts_dense(src, m.path, out_by_in=False))
        else:
            jobs.append(whole(src, m.path, m.to_ours))
    return jobs


# ---- OpenAI original/ -----------------------------------------------------------------------------

def original_maps(cfg: TrunkConfig) -> dict[str, TensorMap]:
    """HF maps by our leaf path, reused for the tensors whose layout the two share."""
    return {leaf(m.path): m for m in tensor_maps(cfg)}


def qkv_rows(cfg: TrunkConfig) -> list[tuple[str, int, int, int]]:
    """(field, first row, last row, heads) of q, k, v inside the fused qkv rows."""
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return [("q", 0, q, cfg.num_heads), ("k", q, q + kv, cfg.num_kv_heads), ("v", q + kv, q + 2 * kv, cfg.num_kv_heads)]


def original_plan(cfg: TrunkConfig, names: set[str]) -> list[Job]:
    """``names``: the tensors present, to tell MXFP4 experts (``.blocks``) from dense ones."""
    E, I, D, V = cfg.num_experts, cfg.intermediate_size, cfg.hidden_size, cfg.vocab_size
    hf = original_maps(cfg)
    rows = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
    jobs = [vocab_rows(Expect("embedding.weight", (V, D), FLOAT), ("embed",), transposed=False),
            vocab_rows(Expect("unembedding.weight", (V, D), FLOAT), ("unembed",), transposed=True),
            whole(Expect("norm.scale", (D,), FLOAT), ("final_norm",))]
    for n in range(cfg.num_layers):
        pre = f"block.{n}."
        qkv_w, qkv_b = Expect(pre + "attn.qkv.weight", (rows, D), FLOAT), Expect(pre + "attn.qkv.bias", (rows,), FLOAT)

        def split(src, suffix, n=n):
            def run(read):
                x = read(src.name)
                for field, a, b, _ in qkv_rows(cfg):
                    m = hf[f"layers/{n}/{field}{suffix}"]
                    yield leaf(m.path), None, m.to_ours(x[a:b])
            return Job((src,), run)

        jobs += [split(qkv_w, ""), split(qkv_b, "_bias")]
        simple = [("attn.out.weight", "o"), ("attn.out.bias", "o_bias"), ("attn.sinks", "sinks"),
                  ("attn.norm.scale", "attn_norm"), ("mlp.norm.scale", "mlp_norm"),
                  ("mlp.gate.weight", "router"), ("mlp.gate.bias", "router_bias"),
                  ("mlp.mlp1_bias", "gate_up_bias"), ("mlp.mlp2_bias", "down_bias")]
        for name, field in simple:
            m = hf[f"layers/{n}/{field}"]
            jobs.append(whole(Expect(pre + name, m.hf_shape, FLOAT), m.path, m.to_ours))
        for name, field, out, inp in (("mlp.mlp1_weight", "gate_up", 2 * I, D), ("mlp.mlp2_weight", "down", D, I)):
            path = ("layers", n, field)
            if pre + name + ".blocks" in names or pre + name not in names:
                jobs.append(experts_mxfp4(*mxfp4_expect(pre + name, ".", E, out, inp), path))
            else:
                jobs.append(experts_dense(Expect(pre + name, (E, out, inp), FLOAT), path, out_by_in=True))
    return jobs


OPENAI_REQUIRED = ("num_hidden_layers", "num_experts", "experts_per_token", "vocab_size", "hidden_size",
                   "intermediate_size", "head_dim", "num_attention_heads", "num_key_value_heads")


def config_from_openai(oc: dict, dtype: str) -> TrunkConfig:
    """OpenAI ``ModelConfig`` field names → TrunkConfig. Sliding window on even layers (OpenAI
    ``AttentionBlock``); β_fast = rope_ntk_beta, β_slow = rope_ntk_alpha (HF's conversion script)."""
    missing = [k for k in OPENAI_REQUIRED if k not in oc]
    if missing:
        raise KeyError(f"missing field(s) {missing}")
    defaults = TrunkConfig()
    factor = float(oc.get("rope_scaling_factor", 32.0))
    context = int(oc.get("initial_context_length", 4096))
    vocab = int(oc["vocab_size"])
    return TrunkConfig(
        vocab_size=vocab, hidden_size=oc["hidden_size"], intermediate_size=oc["intermediate_size"],
        num_layers=oc["num_hidden_layers"], num_heads=oc["num_attention_heads"],
        num_kv_heads=oc["num_key_value_heads"], head_dim=oc["head_dim"], num_experts=oc["num_experts"],
        experts_per_token=oc["experts_per_token"], sliding_window=oc.get("sliding_window", 128),
        rope_theta=float(oc.get("rope_theta", 150000.0)), rope_scaling_factor=factor,
        rope_beta_fast=float(oc.get("rope_ntk_beta", 32.0)), rope_beta_slow=float(oc.get("rope_ntk_alpha", 1.0)),
        rope_original_max_position=context, max_position_embeddings=int(context * max(factor, 1.0)),
        swiglu_limit=float(oc.get("swiglu_limit", 7.0)),
        eos_token_ids=tuple(t for t in defaults.eos_token_ids if t < vocab),
        pad_token_id=defaults.pad_token_id if defaults.pad_token_id < vocab else 0, dtype=dtype)


def config_to_openai(cfg: TrunkConfig) -> dict:
    """The fields of OpenAI's ``ModelConfig`` (and no others: ``ModelConfig(**json)`` rejects extras)."""
    return {"num_hidden_layers": cfg.num_layers, "num_experts": cfg.num_experts,
            "experts_per_token": cfg.experts_per_token, "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
            "swiglu_limit": cfg.swiglu_limit, "head_dim": cfg.head_dim, "num_attention_heads": cfg.num_heads,
            "num_key_value_heads": cfg.num_kv_heads, "sliding_window": cfg.sliding_window,
            "initial_context_length": cfg.rope_original_max_position, "rope_theta": cfg.rope_theta,
            "rope_scaling_factor": cfg.rope_scaling_factor, "rope_ntk_alpha": cfg.rope_beta_slow,
            "rope_ntk_beta": cfg.rope_beta_fast}
