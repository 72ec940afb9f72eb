"""``Trunk``: the user-facing handle on a GPT-OSS decoder (config + parameters + compiled calls).

    trunk = Trunk.from_pretrained("gpt-oss-20b/")          # HF directory or converted checkpoint
    logits = trunk.logits(ids_BxT)                          # float32 numpy [B, T, V]
    out = trunk.generate([[1, 2, 3]], max_new_tokens=32)    # cached sequential decoding
"""
from __future__ import annotations

import dataclasses
import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from pdt_jax.trunk import decode, model
from pdt_jax.trunk.config import ConfigError, TrunkConfig
from pdt_jax.trunk.hf_layout import CheckpointError, hf_dtype, load_hf_params, read_hf_config
from pdt_jax.trunk.params import abstract_from_specs, axes_from_specs, init_trunk, path_str, trunk_specs

CONVERTED_MARKER = "pdt_trunk.json"  # config of a converted (Orbax) trunk checkpoint


def pad_batch(sequences, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads a list of token lists (or a [B, T] array) → (ids int32 [B, T], lengths int32 [B])."""
    if isinstance(sequences, np.ndarray) and sequences.ndim == 2:
        return sequences.astype(np.int32), np.full((sequences.shape[0],), sequences.shape[1], np.int32)
    seqs = [list(map(int, s)) for s in sequences]
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("every prompt must hold at least one token")
    T = max(len(s) for s in seqs)
    ids = np.full((len(seqs), T), pad_id, np.int32)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
    return ids, np.array([len(s) for s in seqs], np.int32)


def trunk_shardings(cfg: TrunkConfig, mesh, rules=None):
    """Every trunk leaf's NamedSharding on ``mesh`` from its declared logical axes."""
    from pdt_jax.sharding import ShardingRules

    specs = trunk_specs(cfg)
    return (rules or ShardingRules()).tree(abstract_from_specs(specs), axes_from_specs(specs), mesh, prefix="trunk")


def bucket(n: int, step: int = 64) -> int:
    """Round a cache length up so that nearby lengths share one compiled program."""
    return ((n + step - 1) // step) * step


@dataclasses.dataclass
class GenerateOutput:
    tokens: list[list[int]]  # generated ids per row (EOS included when it was produced)
    prompt_lengths: list[int]
    finished: list[bool]  # row stopped at an EOS token


def _cast_params(params, cfg: TrunkConfig):
    specs = trunk_specs(cfg)
    from pdt_jax.trunk.params import is_spec
    return jax.tree.map(lambda s, p: jnp.asarray(p, s.dtype), specs, params, is_leaf=is_spec)


class Trunk:
    # Generation steps per dispatch: one token per dispatch spends most of a small model's step
    # launching it (tiny config, CPU: 16 tokens per dispatch decode 2.7x faster than 1).
    decode_chunk = 16

    def __init__(self, cfg: TrunkConfig, params: dict, moe_impl: str = "auto"):
        self.cfg = cfg
        self.params = params
        self.moe_impl = moe_impl
        self._prefill = jax.jit(partial(self._prefill_fn, cfg, moe_impl), static_argnames=("max_len",))
        self._decode = jax.jit(partial(self._decode_fn, cfg, moe_impl), static_argnums=(0, 1, 2, 3), donate_argnums=(5,))
        self._logits = jax.jit(partial(self._logits_fn, cfg, moe_impl))

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def random(cls, cfg: TrunkConfig, seed: int = 0, init_std: float = 0.02, **kw) -> "Trunk":
        return cls(cfg, init_trunk(cfg, jax.random.key(seed), init_std), **kw)

    @classmethod
    def from_pretrained(cls, path: str, dtype: str | None = None, mesh=None, rules=None, **kw) -> "Trunk":
        """Loads an HF GPT-OSS directory (config.json + safetensors, f32 or bf16) or a converted
        checkpoint (``pdt_trunk.json`` + Orbax ``params/``). ``dtype`` ('float32'|'bfloat16')
        selects the parameter and compute dtype; default: the checkpoint's. With a ``mesh`` every
        leaf is restored straight onto its sharding (``rules``: default ``ShardingRules()``), each
        device reading only its slice of a converted checkpoint."""
        if not os.path.isdir(path):
            raise CheckpointError(f"{path}: expected a checkpoint directory, found "
                                  f"{'a file' if os.path.exists(path) else 'nothing'}")
        if dtype is not None and dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"dtype: expected 'float32' or 'bfloat16', found {dtype!r}")
        shardings = lambda cfg: None if mesh is None else trunk_shardings(cfg, mesh, rules)
        if os.path.exists(os.path.join(path, CONVERTED_MARKER)):
            from pdt_jax.trunk.checkpoint import load_converted, read_converted_config
            stored = read_converted_config(path)
            cfg, params = load_converted(path, dtype, shardings(stored.replace(dtype=dtype or stored.dtype)))
            return cls(cfg, params, **kw)
        hf = read_hf_config(path)
        try:
            cfg = TrunkConfig.from_hf(hf, dtype=dtype or hf_dtype(hf, path))
        except ConfigError as e:
            raise CheckpointError(f"{os.path.join(path, 'config.json')}: {e}") from e
        if (hf.get("quantization_config") or {}).get("quant_method") == "mxfp4":
            raise CheckpointError(f"{path}: MXFP4-quantized checkpoint; convert it first with "
                                  f"`python -m converters.gpt_oss import --src {path} --dst DIR`")
        flat = None if mesh is None else {path_str(p): s for p, s in jax.tree_util.tree_flatten_with_path(
            shardings(cfg), is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))[0]}
        place = (lambda _, a: jnp.asarray(a)) if flat is None else (lambda p, a: jax.device_put(a, flat[path_str(p)]))
        params = load_hf_params(path, cfg, cfg.dtype, place=place)
        return cls(cfg, params, **kw)

    def save(self, path: str) -> None:
        from pdt_jax.trunk.checkpoint import save_converted
        save_converted(path, self.cfg, self.params)

    def astype(self, dtype: str) -> "Trunk":
        cfg = self.cfg.replace(dtype=dtype)
        return Trunk(cfg, _cast_params(self.params, cfg), self.moe_impl)

    # ---- pure functions (jitted in __init__) ---------------------------------------------------
    @staticmethod
    def _logits_fn(cfg, moe_impl, params, ids, lengths):
        hidden, _ = model.prefill(params, ids, lengths, cfg=cfg, moe_impl=moe_impl)
        return model.unembed(params, hidden)

    @staticmethod
    def _prefill_fn(cfg, moe_impl, params, ids, lengths, *, max_len):
        hidden, cache = model.prefill(params, ids, lengths, cfg=cfg, max_len=max_len, moe_impl=moe_impl)
        last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)
        return model.unembed(params, last)[:, 0], cache

    @staticmethod
    def _decode_fn(cfg, moe_impl, greedy, top_k, chunk, with_logits, params, cache, logits, active, key, eos, temperature,
                   top_p, steps):
        """``steps`` (≤ ``chunk``, traced) generation steps in one dispatch, each a ``decode.step``
        (no sidecar); a row that produced EOS stops. Returns the tokens [B, chunk] (and the logits
        each step sampled from, [B, chunk, V])."""
        B, V = logits.shape
        sampling = decode.Sampling(greedy=greedy, top_k=top_k)

        def step(i, carry):
            cache, logits, active, key, tokens, seen = carry
            sub = None
            if not greedy:  # static: greedy steps split no key
                key, sub = jax.random.split(key)
            token, _, new_logits, cache = decode.step(params, cache, logits, active, sub, sampling, cfg=cfg,
                                                      temperature=temperature, top_p=top_p, moe_impl=moe_impl)
            tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, i))
            if with_logits:
                seen = jax.lax.dynamic_update_slice(seen, logits[:, None], (0, i, 0))
            return cache, new_logits, active & ~jnp.isin(token, eos), key, tokens, seen

        tokens = jnp.full((B, chunk), cfg.pad_token_id, jnp.int32)
        seen = jnp.zeros((B, chunk, V), jnp.float32) if with_logits else None
        cache, logits, active, key, tokens, seen = jax.lax.fori_loop(
            0, steps, step, (cache, logits, active, key, tokens, seen))
        return tokens, seen, active, logits, cache, key

    # ---- user API ------------------------------------------------------------------------------
    def logits(self, token_ids) -> np.ndarray:
        """token_ids int [B, T] → float32 numpy logits [B, T, V]."""
        ids = np.asarray(token_ids, np.int32)
        if ids.ndim != 2:
            raise ValueError(f"token_ids: expected an int array [B, T], found shape {ids.shape}")
        lengths = np.full((ids.shape[0],), ids.shape[1], np.int32)
        return np.asarray(self._logits(self.params, ids, lengths))

    def generate(self, prompt_ids, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, seed: int = 0, eos_ids=None, return_logits: bool = False):
        """Cached sequential decoding for a batch of prompts of any lengths, ``decode_chunk`` tokens
        per dispatch. The decode program is compiled once per (batch, cache bucket) and reused for
        every chunk, whatever the length; greedy decoding (temperature 0) and sampling are two
        programs, each shared by every temperature and top-p."""
        if top_k < 0 or temperature < 0 or not 0.0 < top_p <= 1.0:
            raise ValueError(f"generate: expected top_k >= 0, temperature >= 0 and 0 < top_p <= 1, found "
                             f"top_k={top_k}, temperature={temperature}, top_p={top_p}")
        ids, lengths = pad_batch(prompt_ids, pad_id=self.cfg.pad_token_id)
        B = ids.shape[0]
        max_len = bucket(int(lengths.max()) + max_new_tokens)
        if max_len > self.cfg.max_position_embeddings:
            raise ValueError(f"prompt + max_new_tokens = {max_len} exceeds max_position_embeddings "
                             f"{self.cfg.max_position_embeddings}")
        eos = np.asarray(sorted(set(self.cfg.eos_token_ids if eos_ids is None else eos_ids)) or [-1], np.int32)
        key = jax.random.key(seed)
        logits, cache = self._prefill(self.params, ids, lengths, max_len=max_len)
        active = jnp.ones((B,), bool)
        greedy = not temperature > 0
        temperature, top_p = jnp.float32(temperature), jnp.float32(top_p)
        chunk = self.decode_chunk
        out, seen, previous = [], [], None
        for start in range(0, max_new_tokens, chunk):
            steps = min(chunk, max_new_tokens - start)
            tokens, logits_seen, active, logits, cache, key = self._decode(
                greedy, 0 if greedy else int(top_k), chunk, bool(return_logits), self.params, cache, logits, active,
                key, eos, temperature, top_p, np.int32(steps))
            out.append((tokens, steps))
            seen.append(logits_seen)
            # Stop when every row has ended. The flag looked at is the previous chunk's (done by
            # now, typically), so the device always has the next chunk queued.
            if previous is not None and not np.asarray(previous).any():
                break
            previous = active
        tokens = (np.concatenate([np.asarray(t)[:, :n] for t, n in out], axis=1) if out
                  else np.zeros((B, 0), np.int32))
        rows, finished = [], []
        for b in range(B):
            row = tokens[b].tolist()
            stop = next((i for i, t in enumerate(row) if t in set(eos.tolist())), None)
            rows.append(row if stop is None else row[:stop + 1])
            finished.append(stop is not None)
        result = GenerateOutput(rows, lengths.tolist(), finished)
        if return_logits:  # [B, longest row, V]: logits[b, i] is what tokens[b][i] was chosen from
            longest = max((len(r) for r in rows), default=0)
            return result, np.concatenate([np.asarray(l)[:, :n] for l, (_, n) in zip(seen, out)], axis=1)[:, :longest]
        return result

