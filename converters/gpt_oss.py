"""GPT-OSS checkpoints ↔ our converted trunk checkpoint, streaming one tensor (slice) at a time.

    python -m converters.gpt_oss import --src gpt-oss-20b --dst ckpt/trunk [--dtype bfloat16] [--mesh fsdp=8]
    python -m converters.gpt_oss export --src ckpt/trunk --dst out --format hf|original|torch

``import`` detects the layout (Hugging Face bf16/f32, Hugging Face MXFP4, OpenAI ``original/``; see
``converters/layouts.py``), checks every tensor's name, shape and dtype from the file headers before
reading any data, then streams: each job reads one tensor — one expert or one block of vocabulary rows
of the large ones — dequantizes, splits, transposes and casts it, and writes it to the checkpoint, so
host memory is bounded by a slice of the largest tensor, not by the model. With ``--mesh`` each leaf
is assembled, placed on its sharding and written from the devices' shards. Errors name the file,
tensor, expected and found values and leave nothing at ``--dst``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

import numpy as np

from converters import layouts
from converters import safetensors_io as st
from pdt_jax.trunk import checkpoint
from pdt_jax.trunk.config import ConfigError, TrunkConfig
from pdt_jax.trunk.hf_layout import CheckpointError, read_hf_config, safetensors_files, stored_float_dtype

LAYOUTS = ("hf", "hf-mxfp4", "original")


# ---- reading a source directory -------------------------------------------------------------------

class Source:
    """A checkpoint directory: its layout, config and validated tensor headers."""

    def __init__(self, directory: str, dtype: str | None = None):
        self.directory = directory
        if not os.path.isdir(directory):
            raise CheckpointError(f"{directory}: expected a checkpoint directory, found "
                                  f"{'a file' if os.path.exists(directory) else 'nothing'}")
        config_path = os.path.join(directory, "config.json")
        raw = read_hf_config(directory)
        self.tensors: dict[str, st.TensorInfo] = {}
        for path in safetensors_files(directory):
            for name, info in st.read_header(path).items():
                if name in self.tensors:
                    raise CheckpointError(f"{path}: tensor '{name}' also appears in {self.tensors[name].file}; "
                                          f"expected each tensor once")
                self.tensors[name] = info
        if "model_type" in raw or "num_local_experts" in raw:
            quant = raw.get("quantization_config")
            if quant is not None:
                method = quant.get("quant_method") if isinstance(quant, dict) else quant
                if method != "mxfp4":
                    raise CheckpointError(f"{config_path}: field 'quantization_config.quant_method': expected "
                                          f"'mxfp4' (or no quantization_config), found {method!r}")
            self.layout = "hf-mxfp4" if quant is not None else "hf"
            try:
                self.cfg = TrunkConfig.from_hf(raw, dtype=dtype or raw.get("dtype") or raw.get("torch_dtype")
                                               or self.stored_dtype())
            except ConfigError as e:
                raise CheckpointError(f"{config_path}: {e}") from e
            self.plan = layouts.hf_plan(self.cfg, quantized=quant is not None)
        elif "num_experts" in raw and "experts_per_token" in raw:
            self.layout = "original"
            try:
                self.cfg = layouts.config_from_openai(raw, dtype or self.stored_dtype() or "bfloat16")
            except (ConfigError, KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{config_path}: not a valid OpenAI GPT-OSS config ({e})") from e
            self.plan = layouts.original_plan(self.cfg, set(self.tensors))
        else:
            raise CheckpointError(f"{config_path}: expected a GPT-OSS config (Hugging Face: 'model_type': "
                                  f"'gpt_oss'; OpenAI original/: 'num_experts', 'experts_per_token'), found "
                                  f"fields {sorted(raw)[:12]}")
        self._check()

    def stored_dtype(self) -> str | None:
        """The floating dtype of the unquantized tensors (a config.json that names no dtype does
        not make float32 tensors bfloat16)."""
        return stored_float_dtype(info.dtype for info in self.tensors.values())

    def _check(self) -> None:
        expected = {e.name: e for job in self.plan for e in job.inputs}
        for name, info in self.tensors.items():
            e = expected.get(name)
            if e is None:
                example = next(iter(expected))
                raise CheckpointError(f"{info.file}: unknown tensor '{name}'; expected only {self.layout} "
                                      f"GPT-OSS tensors for a {self.cfg.num_layers}-layer model, such as '{example}'")
            if info.shape != e.shape:
                raise CheckpointError(f"{info.file}: tensor '{name}' has shape {info.shape}, expected {e.shape}")
            allowed = layouts.FLOAT_DTYPES if e.kind == layouts.FLOAT else ("U8",)
            if info.dtype not in allowed:
                raise CheckpointError(f"{info.file}: tensor '{name}' has dtype {info.dtype}, expected "
                                      f"{' or '.join(allowed)}")
        missing = [n for n in expected if n not in self.tensors]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise CheckpointError(f"{self.directory}: missing tensor '{missing[0]}'{more}: expected shape "
                                  f"{expected[missing[0]].shape} in the {self.layout} layout, found no such tensor "
                                  f"in {sorted({os.path.basename(i.file) for i in self.tensors.values()})}")

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        return st.read(self.tensors[name], start, stop)

    def nbytes(self, job: layouts.Job) -> int:
        return sum(self.tensors[e.name].nbytes for e in job.inputs)

    def pieces(self, dtype: str | None = None, progress: bool = True):
        """Yields (leaf path, index or None, array cast to the leaf's dtype) for the whole model."""
        from tqdm import tqdm

        from pdt_jax.trunk.params import is_spec, path_str, trunk_specs
        import jax

        cfg = self.cfg.replace(dtype=dtype) if dtype else self.cfg
        dtypes = {path_str(p): np.dtype(s.dtype) for p, s in
                  jax.tree_util.tree_flatten_with_path(trunk_specs(cfg), is_leaf=is_spec)[0]}
        total = sum(self.nbytes(j) for j in self.plan)
        with tqdm(total=total, unit="B", unit_scale=True, disable=not progress, file=sys.stderr,
                  desc=f"{self.layout} tensors 0/{len(self.tensors)}") as bar:
            done = 0
            for job in self.plan:
                for path, index, value in job.run(self.read):
                    yield path, index, np.asarray(value).astype(dtypes[path])
                done += len(job.inputs)
                bar.set_description(f"{self.layout} tensors {done}/{len(self.tensors)}", refresh=False)
                bar.update(self.nbytes(job))


# ---- import ------------------------------------------------------------------------------------------

def _placed(pieces, cfg: TrunkConfig, shardings):
    """Assembles whole leaves from pieces and places each on its sharding as soon as it is complete."""
    import jax

    from pdt_jax.trunk.params import is_spec, path_str, trunk_specs

    flat_specs = {path_str(p): s for p, s in jax.tree_util.tree_flatten_with_path(trunk_specs(cfg), is_leaf=is_spec)[0]}
    flat_shardings = {path_str(p): s for p, s in jax.tree_util.tree_flatten_with_path(
        shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))[0]}
    buffers, filled = {}, {}
    for path, index, value in pieces:
        spec = flat_specs[path]
        if index is None:
            buffer = value
            filled[path] = value.size
        else:
            buffer = buffers.setdefault(path, np.empty(spec.shape, value.dtype))
            buffer[index] = value
            filled[path] = filled.get(path, 0) + value.size
        if filled[path] == int(np.prod(spec.shape)):
            buffers.pop(path, None)
            yield path, jax.device_put(buffer, flat_shardings[path])


def import_checkpoint(src: str, dst: str, dtype: str | None = None, shardings=None, mesh=None, rules=None,
                      progress: bool = True) -> TrunkConfig:
    """Converts a GPT-OSS directory (any layout) into a trunk checkpoint at ``dst``; returns its config.
    ``shardings`` (a pytree like the params), or ``mesh`` with the sharding ``rules`` (default
    ``pdt_jax.sharding.ShardingRules()``, the runtime's and training's), places every leaf before
    it is written."""
    from pdt_jax.trunk.api import trunk_shardings

    source = Source(src, dtype)
    cfg = source.cfg.replace(dtype=dtype) if dtype else source.cfg
    if mesh is not None and shardings is None:
        shardings = trunk_shardings(cfg, mesh, rules)
    with checkpoint.ConvertedWriter(dst, cfg) as writer:
        pieces = source.pieces(dtype, progress)
        if shardings is None:
            for path, index, value in pieces:
                writer.write(path, value, index)
        else:
            for path, value in _placed(pieces, cfg, shardings):
                writer.write(path, value)
    return cfg


def load_params(src: str, dtype: str | None = None, shardings=None, progress: bool = True):
    """Reads a GPT-OSS directory of any layout straight into memory → (cfg, params), each leaf placed
    on ``shardings`` (or the default device) as it completes."""
    import jax

    from pdt_jax.trunk.params import is_spec, path_str, trunk_specs

    source = Source(src, dtype)
    cfg = source.cfg.replace(dtype=dtype) if dtype else source.cfg
    specs = trunk_specs(cfg)
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, specs, is_leaf=is_spec)
    leaves = dict(_placed(source.pieces(dtype, progress), cfg, shardings))
    flat, treedef = jax.tree_util.tree_flatten_with_path(specs, is_leaf=is_spec)
    return cfg, jax.tree_util.tree_unflatten(treedef, [leaves[path_str(p)] for p, _ in flat])


# ---- export -------------------------------------------------------------------------------------------

def _atomic_dir(dst: str):
    dst = os.path.abspath(dst)
    if os.path.exists(dst):
        raise FileExistsError(f"{dst}: already exists; choose a new destination")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    return dst, tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(dst) + "-", dir=os.path.dirname(dst))


def export_checkpoint(src: str, dst: str, fmt: str, dtype: str | None = None, experts: str = "dense",
                      max_shard_bytes: int = 5 << 30, progress: bool = True) -> None:
    """Writes a converted trunk checkpoint as ``hf`` (a directory transformers loads), ``original``
    (OpenAI layout; ``experts='mxfp4'`` quantizes the experts, which is lossy) or ``torch`` (DST/
    pytorch_model.pt, an HF-named state_dict)."""
    from converters import export

    if fmt not in ("hf", "original", "torch"):
        raise ConfigError(f"--format: expected 'hf', 'original' or 'torch', found {fmt!r}")
    if experts not in ("dense", "mxfp4"):
        raise ConfigError(f"--experts: expected 'dense' or 'mxfp4', found {experts!r}")
    reader = export.CheckpointReader(src, dtype)
    final, tmp = _atomic_dir(dst)
    try:
        if fmt == "hf":
            export.write_hf(reader, tmp, max_shard_bytes, progress)
        elif fmt == "original":
            export.write_original(reader, tmp, experts == "mxfp4", max_shard_bytes, progress)
        else:
            export.write_torch(reader, tmp)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---- command line ---------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters.gpt_oss", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="GPT-OSS directory (HF, HF MXFP4 or OpenAI original/) → trunk checkpoint")
    imp.add_argument("--src", required=True)
    imp.add_argument("--dst", required=True)
    imp.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                     help="parameter dtype (default: the source's; bfloat16 for original/)")
    imp.add_argument("--mesh", default=None, help="e.g. 'fsdp=8' (axes data, fsdp, expert, tensor): place each leaf "
                     "on this mesh, by the model config's sharding rules, before writing")
    imp.add_argument("--config", default=None, help="model config whose sharding rules --mesh uses (default: the "
                     "library's rules), e.g. configs/model/pdt.py")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    exp = sub.add_parser("export", help="trunk checkpoint → HF directory, OpenAI original/ or torch .pt")
    exp.add_argument("--src", required=True)
    exp.add_argument("--dst", required=True)
    exp.add_argument("--format", required=True, choices=("hf", "original", "torch"))
    exp.add_argument("--dtype", choices=("bfloat16", "float32"), default=None)
    exp.add_argument("--experts", choices=("dense", "mxfp4"), default="dense",
                     help="original format only: dense experts (default) or MXFP4 blocks/scales (lossy)")
    exp.add_argument("--max-shard-gb", type=float, default=5.0)
    exp.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "import":
            from pdt_jax import config_files, sharding

            rules = config_files.pdt_config(config_files.load(args.config)).rules if args.config else None
            mesh = sharding.make_mesh(sharding.parse_mesh(args.mesh)) if args.mesh else None
            cfg = import_checkpoint(args.src, args.dst, args.dtype, mesh=mesh, rules=rules, progress=not args.quiet)
            print(f"wrote {args.dst}: {cfg.num_layers} layers, dtype {cfg.dtype}")
        else:
            export_checkpoint(args.src, args.dst, args.format, args.dtype, args.experts,
                              int(args.max_shard_gb * (1 << 30)), progress=not args.quiet)
            print(f"wrote {args.dst} ({args.format})")
    except (CheckpointError, ConfigError, FileExistsError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
