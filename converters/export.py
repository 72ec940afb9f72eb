"""Writers for ``python -m converters.gpt_oss export``: a converted trunk checkpoint → a Hugging Face
directory, the OpenAI ``original/`` layout, or a torch ``.pt`` state_dict in Hugging Face naming.

The HF and original writers stream: safetensors headers are laid out first (``safetensors_io.Writer``),
then each tensor is read from the checkpoint (one expert, or a block of vocabulary columns, at a
time), transformed and written in place. The torch writer holds the model in memory (``torch.save``
pickles one dict), so it is meant for small models; use ``--format hf`` for the 20B model.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from converters import layouts, mxfp4
from converters import safetensors_io as st
from converters.torch_interop import save_state_dict
from pdt_jax.trunk import checkpoint
from pdt_jax.trunk.config import ConfigError, TrunkConfig
from pdt_jax.trunk.hf_layout import tensor_maps

VOCAB_CHUNK_BYTES = 64 << 20


class CheckpointReader:
    """Reads leaves (or regions of them) of a converted checkpoint, cast to the export dtype."""

    def __init__(self, path: str, dtype: str | None = None):
        from pdt_jax.trunk.params import is_spec, path_str, trunk_specs
        import jax

        stored_cfg, self.arrays = checkpoint.open_converted(path)
        self.cfg = stored_cfg.replace(dtype=dtype) if dtype else stored_cfg
        self.dtypes = {path_str(p): np.dtype(s.dtype) for p, s in
                       jax.tree_util.tree_flatten_with_path(trunk_specs(self.cfg), is_leaf=is_spec)[0]}

    def __call__(self, leaf: str, index=()) -> np.ndarray:
        return self.arrays[leaf][index].read().result().astype(self.dtypes[leaf], copy=False)

    def vocab_blocks(self, leaf: str, transposed: bool):
        """(first row, rows [n, D]) of embed [V, D], or of unembed [D, V] read column-block-wise."""
        V = self.cfg.vocab_size
        step = max(1, VOCAB_CHUNK_BYTES // (4 * self.cfg.hidden_size))
        for a in range(0, V, step):
            b = min(V, a + step)
            yield a, (self(leaf, (slice(None), slice(a, b))).T if transposed else self(leaf, (slice(a, b),)))


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tensor", disable=not enabled, file=sys.stderr)


def write_hf(reader: CheckpointReader, out: str, max_shard_bytes: int, progress: bool) -> None:
    cfg = reader.cfg
    maps = tensor_maps(cfg)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg.to_hf(), f, indent=1)
    writer = st.Writer(out, [(m.hf_name, m.hf_shape, reader.dtypes[layouts.leaf(m.path)]) for m in maps],
                       max_shard_bytes)
    with _progress(len(maps), "hf tensors", progress) as bar:
        for m in maps:
            leaf = layouts.leaf(m.path)
            field = m.path[-1]
            if field in ("embed", "unembed"):
                for start, rows in reader.vocab_blocks(leaf, transposed=field == "unembed"):
                    writer.put(m.hf_name, rows, start)
            elif field in ("gate_up", "down"):
                for e in range(cfg.num_experts):
                    writer.put(m.hf_name, reader(leaf, (slice(e, e + 1),)), e)
            else:
                writer.put(m.hf_name, m.to_hf(reader(leaf)))
            bar.update()
    writer.close()


def check_openai_compatible(cfg: TrunkConfig) -> None:
    """OpenAI's ModelConfig has no fields for these; its code hard-wires the GPT-OSS values."""
    fixed = {"layer_types": TrunkConfig(num_layers=cfg.num_layers).layer_types, "rms_norm_eps": 1e-5,
             "swiglu_alpha": 1.702, "attention_bias": True}
    for field, want in fixed.items():
        if getattr(cfg, field) != want:
            raise ConfigError(f"trunk config field '{field}': expected {want!r} for the OpenAI original layout "
                              f"(it cannot express other values), found {getattr(cfg, field)!r}")


def original_entries(cfg: TrunkConfig, dtypes: dict, quantized: bool) -> list[tuple[str, tuple, np.dtype]]:
    """(name, shape, dtype) of every tensor of the original layout, in file order."""
    E, I, D, V = cfg.num_experts, cfg.intermediate_size, cfg.hidden_size, cfg.vocab_size
    dt, f32 = dtypes["embed"], np.dtype(np.float32)
    rows = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
    entries = [("embedding.weight", (V, D), dt)]
    for n in range(cfg.num_layers):
        pre = f"block.{n}."
        entries += [(pre + "attn.norm.scale", (D,), f32), (pre + "attn.qkv.weight", (rows, D), dt),
                    (pre + "attn.qkv.bias", (rows,), dt), (pre + "attn.sinks", (cfg.num_heads,), f32),
                    (pre + "attn.out.weight", (D, cfg.num_heads * cfg.head_dim), dt), (pre + "attn.out.bias", (D,), dt),
                    (pre + "mlp.norm.scale", (D,), f32), (pre + "mlp.gate.weight", (E, D), dt),
                    (pre + "mlp.gate.bias", (E,), dt)]
        for name, out, inp, bias in (("mlp1", 2 * I, D, 2 * I), ("mlp2", D, I, D)):
            if quantized:
                blocks, scales = layouts.mxfp4_expect(f"{pre}mlp.{name}_weight", ".", E, out, inp)
                entries += [(blocks.name, blocks.shape, np.dtype(np.uint8)), (scales.name, scales.shape, np.dtype(np.uint8))]
            else:
                entries.append((f"{pre}mlp.{name}_weight", (E, out, inp), dt))
            entries.append((f"{pre}mlp.{name}_bias", (E, bias), dt))
    entries += [("norm.scale", (D,), f32), ("unembedding.weight", (V, D), dt)]
    return entries


def write_original(reader: CheckpointReader, out: str, quantized: bool, max_shard_bytes: int,
                   progress: bool) -> None:
    cfg = reader.cfg
    check_openai_compatible(cfg)
    if quantized and (cfg.hidden_size % mxfp4.BLOCK or cfg.intermediate_size % mxfp4.BLOCK):
        raise ConfigError(f"--experts mxfp4: expected hidden_size and intermediate_size to be multiples of "
                          f"{mxfp4.BLOCK}, found {cfg.hidden_size} and {cfg.intermediate_size}")
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(layouts.config_to_openai(cfg), f, indent=1)
    hf = layouts.original_maps(cfg)
    writer = st.Writer(out, original_entries(cfg, reader.dtypes, quantized), max_shard_bytes)
    with _progress(cfg.num_layers + 2, "original layers", progress) as bar:
        for start, rows in reader.vocab_blocks("embed", transposed=False):
            writer.put("embedding.weight", rows, start)
        bar.update()
        for n in range(cfg.num_layers):
            pre, ours = f"block.{n}.", f"layers/{n}/"

            def to_hf(field):
                return hf[ours + field].to_hf(reader(ours + field))

            writer.put(pre + "attn.qkv.weight", np.concatenate([to_hf(f) for f in ("q", "k", "v")], axis=0))
            writer.put(pre + "attn.qkv.bias", np.concatenate([to_hf(f + "_bias") for f in ("q", "k", "v")], axis=0))
            for name, field in (("attn.norm.scale", "attn_norm"), ("attn.sinks", "sinks"), ("attn.out.weight", "o"),
                                ("attn.out.bias", "o_bias"), ("mlp.norm.scale", "mlp_norm"),
                                ("mlp.gate.weight", "router"), ("mlp.gate.bias", "router_bias"),
                                ("mlp.mlp1_bias", "gate_up_bias"), ("mlp.mlp2_bias", "down_bias")):
                writer.put(pre + name, to_hf(field))
            for name, field in (("mlp.mlp1_weight", "gate_up"), ("mlp.mlp2_weight", "down")):
                for e in range(cfg.num_experts):
                    w = reader(ours + field, (e,)).T  # ours in × out → OpenAI out × in
                    if quantized:
                        blocks, scales = mxfp4.quantize(w.astype(np.float32))
                        writer.put(pre + name + ".blocks", blocks[None], e)
                        writer.put(pre + name + ".scales", scales[None], e)
                    else:
                        writer.put(pre + name, np.ascontiguousarray(w)[None], e)
            bar.update()
        writer.put("norm.scale", reader("final_norm"))
        for start, rows in reader.vocab_blocks("unembed", transposed=True):
            writer.put("unembedding.weight", rows, start)
        bar.update()
    writer.close()


def write_torch(reader: CheckpointReader, out: str) -> None:
    """DST/pytorch_model.pt (HF names, loads into GptOssForCausalLM with strict=True) + config.json."""
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(reader.cfg.to_hf(), f, indent=1)
    state = {m.hf_name: m.to_hf(reader(layouts.leaf(m.path))) for m in tensor_maps(reader.cfg)}
    save_state_dict(state, os.path.join(out, "pytorch_model.pt"))
