#!/usr/bin/env python3
"""Convert the SmolLM2-135M-Instruct GGUF into an ONNX model with KV cache and a tokenizer.json.

    python convert_smollm2.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out DIR \
        --ops-library libswitchyard_blockops.so [--keep-fp32] [--quant fused|exact|rtn]

Writes into DIR (atomically: everything goes to a temporary sibling directory that is
renamed to DIR only once complete):

  model.onnx         the graph holding the GGUF's own blocks losslessly: the Q4_1 layers in
                     switchyard.MatMulQ4_1 (services/blockops: 4-bit values, half-float scale and
                     minimum per block of 32, int8 activations), the tied lm_head (token_embd,
                     Q8_0) in com.microsoft MatMulNBits, 8 bits, accuracy_level 4; the embedding
                     Gather stays fp32. --quant exact puts the Q4_1 layers in MatMulNBits too
                     (+ an fp32 per-block correction matmul for Q4_1's minimum: onnxruntime's ops
                     only, ~20 % slower); --quant rtn re-quantizes with onnxruntime's
                     MatMulNBitsQuantizer (4 bits everywhere, far less faithful: README.md)
  libswitchyard_blockops.so   (--quant fused) the custom-op library, copied from --ops-library:
                     register it to load model.onnx (session_options() below does)
  model_fp32.onnx    with --keep-fp32: the same graph with fp32 MatMuls (the GGUF dequantized)
  tokenizer.json     HF `tokenizers` byte-level BPE built from the GGUF vocabulary and merges
  generation.json    bos/eos/pad ids, the chat template, the KV-cache geometry
  conversion.json    provenance: source GGUF (path, size, sha256), converter settings, timings

Only numpy, onnx, onnxruntime and gguf are used; see README.md beside this file for the
decisions (RoPE layout, quantization settings, measured speed and accuracy).

Graph I/O (a contract with the Rust worker):
  inputs   input_ids int64 [batch, seq]; attention_mask int64 [batch, past_seq + seq]
           (1 = token, 0 = padding; left padding works); position_ids int64 [batch, seq];
           past_key_values.{i}.key / .value float32 [batch, 3, past_seq, 64], i in 0..30
  outputs  logits float32 [batch, seq, vocab]; present.{i}.key / .value float32
           [batch, 3, past_seq + seq, 64] (keys are stored after RoPE)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CONVERTER_VERSION = 3
OPSET = 17
# What the GGUF must say (read from its metadata, then checked against these).
EXPECTED = {
    "general.architecture": "llama",
    "llama.block_count": 30,
    "llama.embedding_length": 576,
    "llama.feed_forward_length": 1536,
    "llama.attention.head_count": 9,
    "llama.attention.head_count_kv": 3,
    "llama.rope.dimension_count": 64,
    "llama.vocab_size": 49152,
    "tokenizer.ggml.model": "gpt2",
}
# MatMulNBits' accuracy_level 4: int8 activations (per block of 32), ~2.5x faster on CPU than
# level 0 (fp32 compute), at a small cost in accuracy (README.md has the numbers).
QUANT_ACCURACY_LEVEL = 4
# --quant rtn only (onnxruntime's MatMulNBitsQuantizer re-quantizing the dequantized weights):
RTN_BLOCK_SIZE = 32
RTN_SYMMETRIC = False
# --quant fused: the Q4_1 layers in the project's own custom op (services/blockops), whose
# library is copied beside the model as OPS_LIBRARY; consumers register it when present.
FUSED_DOMAIN = "switchyard"
FUSED_OP = "MatMulQ4_1"
OPS_LIBRARY = "libswitchyard_blockops.so"
MASK_VALUE = -1e9  # additive mask; finite, so a fully masked (padding) row never gives NaN
# GGUF token types (llama.cpp's LLAMA_TOKEN_TYPE_*)
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[convert_smollm2 {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# GGUF reading


class Gguf:
    """Metadata and dequantized tensors of a llama GGUF."""

    def __init__(self, path: Path):
        from gguf import GGUFReader

        self.path = path
        self.reader = GGUFReader(str(path))
        self.tensors = {t.name: t for t in self.reader.tensors}

    def meta(self, key: str, default=None):
        field = self.reader.fields.get(key)
        if field is None:
            if default is not None:
                return default
            raise KeyError(f"GGUF metadata {key!r} missing")
        return field.contents()

    def tensor(self, name: str) -> np.ndarray:
        """fp32 array in numpy order: GGUF lists dims innermost first, so a llama weight of
        GGUF shape [in, out] comes back as [out, in] (the PyTorch Linear layout)."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        t = self.tensors[name]
        shape = tuple(int(d) for d in reversed(t.shape))
        if t.tensor_type == GGMLQuantizationType.F32:
            arr = np.asarray(t.data, dtype=np.float32)
        else:
            arr = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        return np.ascontiguousarray(arr.reshape(shape))


def read_config(g: Gguf) -> dict:
    for key, want in EXPECTED.items():
        got = g.meta(key)
        if got != want:
            raise ValueError(f"GGUF {key} = {got!r}, expected {want!r}: not SmolLM2-135M")
    cfg = {
        "n_layer": int(g.meta("llama.block_count")),
        "hidden": int(g.meta("llama.embedding_length")),
        "ffn": int(g.meta("llama.feed_forward_length")),
        "n_head": int(g.meta("llama.attention.head_count")),
        "n_kv_head": int(g.meta("llama.attention.head_count_kv")),
        "rope_dim": int(g.meta("llama.rope.dimension_count")),
        "rope_theta": float(g.meta("llama.rope.freq_base")),
        "eps": float(g.meta("llama.attention.layer_norm_rms_epsilon")),
        "vocab": int(g.meta("llama.vocab_size")),
        "context_length": int(g.meta("llama.context_length")),
    }
    cfg["head_dim"] = cfg["hidden"] // cfg["n_head"]
    if cfg["head_dim"] * cfg["n_head"] != cfg["hidden"] or cfg["rope_dim"] != cfg["head_dim"]:
        raise ValueError(f"unexpected head geometry: {cfg}")
    if not (1e4 <= cfg["rope_theta"] <= 1e7) or not (0 < cfg["eps"] < 1e-3):
        raise ValueError(f"implausible rope theta / rms eps: {cfg}")
    if "output.weight" in g.tensors:
        raise ValueError("GGUF has output.weight: this converter assumes tied embeddings")
    n_tokens = len(g.reader.fields["tokenizer.ggml.tokens"].data)
    if n_tokens != cfg["vocab"]:
        raise ValueError(f"{n_tokens} tokens in the vocabulary, llama.vocab_size = {cfg['vocab']}")
    return cfg


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's convert_hf_to_gguf `permute` of attn_q / attn_k rows (axis 0; any
    trailing dims ride along, so it works on [rows, cols] and on [rows, blocks, 32] alike).

    llama.cpp rotates adjacent pairs (x[2j], x[2j+1]); HF's rotate_half rotates (x[j], x[j+d/2]).
    The convert script maps HF row h*d + s*d/2 + j to GGUF row h*d + 2j + s, i.e.
    w.reshape(n_head, 2, d//2, cols).swapaxes(1, 2).reshape(rows, cols); this is its inverse.
    """
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


QK = 32  # ggml's block length for Q4_1 and Q8_0, along the input dimension


class BlockWeight:
    """A linear weight [out N, in K] kept as ggml blocks of QK inputs, exactly as the GGUF has it:

        value[n, b*QK + i] = d[n, b] * (q[n, b, i] - origin) + m[n, b]

    Q4_1: q in 0..15, origin 0, m the block minimum.  Q8_0: q = int8 + 128, origin 128, m = 0.
    q is stored unsigned, which is MatMulNBits' layout (its implicit zero point is 2^(bits-1)).
    """

    def __init__(self, q: np.ndarray, d: np.ndarray, m: np.ndarray, bits: int, origin: int):
        self.q, self.d, self.m, self.bits, self.origin = q, d, m, bits, origin

    @classmethod
    def from_gguf(cls, g: "Gguf", name: str) -> "BlockWeight":
        from gguf import GGMLQuantizationType as T

        t = g.tensors[name]
        n_out, n_in = (int(x) for x in reversed(t.shape))
        raw = np.asarray(t.data, dtype=np.uint8).reshape(n_out, n_in // QK, -1)
        if t.tensor_type == T.Q4_1:  # block: f16 d, f16 m, 16 bytes (q[i] low nibble, q[i+16] high)
            assert raw.shape[-1] == 4 + QK // 2, raw.shape
            d = raw[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
            m = raw[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
            qs = raw[..., 4:]
            q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
            return cls(q, d, m, bits=4, origin=0)
        if t.tensor_type == T.Q8_0:  # block: f16 d, 32 int8
            assert raw.shape[-1] == 2 + QK, raw.shape
            d = raw[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
            q = (raw[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
            return cls(q, d, np.zeros_like(d), bits=8, origin=128)
        raise ValueError(f"{name}: GGUF type {t.tensor_type.name} not supported (Q4_1 and Q8_0 are)")

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape[0], self.q.shape[1] * QK

    def rows_unpermuted(self, n_head: int) -> "BlockWeight":
        f = lambda a: unpermute_rows(a, n_head)  # noqa: E731
        return BlockWeight(f(self.q), f(self.d), f(self.m), self.bits, self.origin)

    def scaled(self, factor: float) -> "BlockWeight":
        return BlockWeight(self.q, self.d * np.float32(factor), self.m * np.float32(factor), self.bits, self.origin)

    @staticmethod
    def concat(parts: list["BlockWeight"]) -> "BlockWeight":
        assert len({(p.bits, p.origin, p.shape[1]) for p in parts}) == 1
        c = lambda attr: np.concatenate([getattr(p, attr) for p in parts], axis=0)  # noqa: E731
        return BlockWeight(c("q"), c("d"), c("m"), parts[0].bits, parts[0].origin)

    def dense(self) -> np.ndarray:
        """[N, K] float32, the same arithmetic as gguf.quants.dequantize (d * q + m)."""
        q = self.q.astype(np.float32) - np.float32(self.origin)
        return (self.d[..., None] * q + self.m[..., None]).reshape(self.shape)

    def matmul_nbits(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(B, scales, correction) for y = MatMulNBits(x, B, scales) + blocksum(x) @ correction.

        MatMulNBits computes d * (q - z) with z = 2^(bits-1); the rest of each block's value,
        m + d * (z - origin), is constant across the block, so its contribution to x @ W^T is
        (sum of x over the block) * that constant: correction [K/QK, N], None when all zero.
        """
        z = 1 << (self.bits - 1)
        if self.bits == 4:
            packed = (self.q[..., 0::2] | (self.q[..., 1::2] << 4)).astype(np.uint8)
        else:
            packed = np.ascontiguousarray(self.q)
        corr = self.m + self.d * np.float32(z - self.origin)
        corr = None if not corr.any() else np.ascontiguousarray(corr.T)
        return packed, np.ascontiguousarray(self.d.reshape(-1)), corr

    def q4_1_blocks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B [N, K/2] uint8, scales [N, K/32] fp16, mins [N, K/32] fp16) for
        switchyard.MatMulQ4_1: ggml's own Q4_1 layout (byte i of a block = q[i] | q[i+16] << 4)
        and its half-float d and m. Exact: d and m came from fp16 and were only ever scaled by
        powers of two, which the round trip below checks."""
        assert self.bits == 4 and self.origin == 0, "Q4_1 blocks only"
        half = QK // 2
        qs = (self.q[..., :half] | (self.q[..., half:] << 4)).astype(np.uint8)
        d, m = self.d.astype(np.float16), self.m.astype(np.float16)
        if not (np.array_equal(d.astype(np.float32), self.d) and np.array_equal(m.astype(np.float32), self.m)):
            raise ValueError("block scales or minimums are not exact in fp16")
        return qs.reshape(self.q.shape[0], -1), d, m


def load_weights(g: Gguf, cfg: dict) -> dict:
    """Norm weights as fp32 arrays; every linear as a BlockWeight [out, in] in the graph's layout."""
    hd = cfg["head_dim"]
    w: dict = {}
    emb = BlockWeight.from_gguf(g, "token_embd.weight")
    assert emb.shape == (cfg["vocab"], cfg["hidden"]), emb.shape
    w["lm_head"] = emb  # tied embeddings
    w["final_norm"] = g.tensor("output_norm.weight")
    for i in range(cfg["n_layer"]):
        p = f"blk.{i}."
        bw = lambda name: BlockWeight.from_gguf(g, p + name)  # noqa: E731
        q = bw("attn_q.weight").rows_unpermuted(cfg["n_head"])
        k = bw("attn_k.weight").rows_unpermuted(cfg["n_kv_head"])
        v = bw("attn_v.weight")
        assert q.shape == (cfg["n_head"] * hd, cfg["hidden"]), q.shape
        assert k.shape == v.shape == (cfg["n_kv_head"] * hd, cfg["hidden"]), k.shape
        # 1/sqrt(head_dim) = 0.125 is a power of two: folding it into W_q's block scales and
        # minimums is exact, and saves a Mul per layer.
        scale = 1.0 / np.sqrt(hd)
        assert scale == 2.0 ** np.round(np.log2(scale)), "head_dim must be a power of 4"
        w[p + "qkv"] = BlockWeight.concat([q.scaled(scale), k, v])
        w[p + "o"] = bw("attn_output.weight")
        gate, up = bw("ffn_gate.weight"), bw("ffn_up.weight")
        assert gate.shape == up.shape == (cfg["ffn"], cfg["hidden"]), gate.shape
        w[p + "gate_up"] = BlockWeight.concat([gate, up])
        w[p + "down"] = bw("ffn_down.weight")
        assert w[p + "down"].shape == (cfg["hidden"], cfg["ffn"])
        w[p + "attn_norm"] = g.tensor(p + "attn_norm.weight")
        w[p + "ffn_norm"] = g.tensor(p + "ffn_norm.weight")
    return w


# ---------------------------------------------------------------------------------------------
# Graph


class GraphBuilder:
    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self._n = 0

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str | None = None, n_out: int = 1, **attrs):
        self._n += 1
        base = name or f"{op_type}_{self._n}"
        outs = [base] if n_out == 1 else [f"{base}_{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=base, **attrs))
        return outs[0] if n_out == 1 else outs


def build_model(w: dict, cfg: dict, nbits: bool, fused: bool = False) -> onnx.ModelProto:
    """The graph; nbits=False: every linear an fp32 MatMul; True: the GGUF's own 4-bit (and the
    lm_head's 8-bit) blocks in MatMulNBits, exactly (see BlockWeight.matmul_nbits); fused=True
    (with nbits): the Q4_1 layers in switchyard.MatMulQ4_1 instead (BlockWeight.q4_1_blocks)."""
    b = GraphBuilder()
    L, H, KV, D = cfg["n_layer"], cfg["n_head"], cfg["n_kv_head"], cfg["head_dim"]
    hidden, ffn, vocab = cfg["hidden"], cfg["ffn"], cfg["vocab"]
    rep = H // KV
    half = D // 2

    # shared constants
    b.const("c_eps", np.array(cfg["eps"], np.float32))
    b.const("c_two", np.array(2.0, np.float32))
    b.const("c_zero_f", np.array(0.0, np.float32))
    b.const("c_mask", np.array(MASK_VALUE, np.float32))
    b.const("c_0", np.array(0, np.int64))
    b.const("c_1", np.array(1, np.int64))
    b.const("ax_0", np.array([0], np.int64))
    b.const("ax_1", np.array([1], np.int64))
    b.const("ax_2", np.array([2], np.int64))
    b.const("ax_last", np.array([-1], np.int64))
    b.const("shape_qk_heads", np.array([0, 0, H + KV, D], np.int64))  # [B,S,12,64]
    b.const("shape_v_heads", np.array([0, 0, KV, D], np.int64))  # [B,S,3,64]
    b.const("shape_q_grouped", np.array([0, KV, -1, D], np.int64))  # [B,3,rep*S,64]
    b.const("shape_scores_heads", np.array([0, H, -1, 0], np.int64))  # [B,9,S,T]
    b.const("shape_scores_grouped", np.array([0, KV, -1, 0], np.int64))  # [B,3,rep*S,T]
    b.const("shape_ctx_heads", np.array([0, H, -1, D], np.int64))  # [B,9,S,64]
    b.const("shape_hidden", np.array([0, 0, hidden], np.int64))
    if nbits and not fused:  # only the correction ops use it
        b.const("shape_blocks", np.array([0, 0, -1, QK], np.int64))
    b.const("split_qkv", np.array([(H + KV) * D, KV * D], np.int64))
    b.const("split_qk", np.array([H, KV], np.int64))
    b.const("split_ffn", np.array([ffn, ffn], np.int64))
    # rotate_half(x) * sin == x[..., swapped halves] * [-sin_lo, sin_hi]
    b.const("rope_swap_idx", np.concatenate([np.arange(half, D), np.arange(half)]).astype(np.int64))
    b.const("rope_sign", np.concatenate([-np.ones(half), np.ones(half)]).astype(np.float32))
    inv_freq = 1.0 / (cfg["rope_theta"] ** (np.arange(0, D, 2, dtype=np.int64).astype(np.float32) / D))
    b.const("rope_inv_freq", inv_freq.astype(np.float32))  # as HF computes it, in fp32

    # inputs / outputs
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_seq"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])]
    for i in range(L):
        for kind in ("key", "value"):
            inputs.append(
                helper.make_tensor_value_info(
                    f"past_key_values.{i}.{kind}", TensorProto.FLOAT, ["batch", KV, "past_seq", D]
                )
            )
    for i in range(L):
        for kind in ("key", "value"):
            outputs.append(
                helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT, ["batch", KV, "total_seq", D])
            )

    def linear(inp: str, name: str, weight: BlockWeight) -> str:
        n_out, n_in = weight.shape
        if not nbits:
            b.const(name + ".weight", np.ascontiguousarray(weight.dense().T))
            return b.op("MatMul", [inp, name + ".weight"], name=name)
        if fused and weight.bits == 4:
            # the custom op reads each block's d, m and nibbles in one pass (services/blockops)
            qs, d, m = weight.q4_1_blocks()
            b.const(name + ".weight_q", qs)
            b.const(name + ".weight_scales", d)
            b.const(name + ".weight_mins", m)
            return b.op(
                FUSED_OP, [inp, name + ".weight_q", name + ".weight_scales", name + ".weight_mins"],
                name=name, domain=FUSED_DOMAIN, K=n_in, N=n_out,
            )
        packed, scales, corr = weight.matmul_nbits()
        b.const(name + ".weight_q", packed)
        b.const(name + ".weight_scales", scales)
        y = b.op(
            "MatMulNBits", [inp, name + ".weight_q", name + ".weight_scales"],
            name=name if corr is None else name + "/q", domain="com.microsoft",
            K=n_in, N=n_out, bits=weight.bits, block_size=QK, accuracy_level=QUANT_ACCURACY_LEVEL,
        )
        if corr is None:
            return y
        # + (sum of the input over each block) @ (each block's constant part): Q4_1's minimum.
        # The constants are stored [N, K/32] and multiplied transposed: the same sums, but
        # onnxruntime reads them ~9 % faster per decode step than a plain [K/32, N] MatMul
        # (loadtest/RESULTS.md, 2026-12-07 12:55).
        b.const(name + ".weight_block_corr_t", np.ascontiguousarray(corr.T))
        blocks = b.op("Reshape", [inp, "shape_blocks"], name=name + "/blocks")  # [B,S,K/32,32]
        sums = b.op("ReduceSum", [blocks, "ax_last"], name=name + "/block_sums", keepdims=0)
        corr_y = b.op(
            "FusedMatMul", [sums, name + ".weight_block_corr_t"], name=name + "/corr",
            domain="com.microsoft", transB=1,
        )
        return b.op("Add", [y, corr_y], name=name)

    # embedding (fp32 Gather)
    b.const("embed_tokens.weight", w["lm_head"].dense())
    x = b.op("Gather", ["embed_tokens.weight", "input_ids"], name="embed_tokens", axis=0)

    # RoPE tables for the positions given: cos/sin [B,S,1,64]
    pos = b.op("Cast", ["position_ids"], name="rope_pos", to=TensorProto.FLOAT)
    pos = b.op("Unsqueeze", [pos, "ax_last"], name="rope_pos3")  # [B,S,1]
    freqs = b.op("Mul", [pos, "rope_inv_freq"], name="rope_freqs")  # [B,S,32]
    freqs = b.op("Concat", [freqs, freqs], name="rope_freqs2", axis=-1)  # [B,S,64]
    cos = b.op("Cos", [freqs], name="rope_cos_")
    cos = b.op("Unsqueeze", [cos, "ax_2"], name="rope_cos")
    sin = b.op("Sin", [freqs], name="rope_sin_")
    sin = b.op("Mul", [sin, "rope_sign"], name="rope_sin_signed")
    sin = b.op("Unsqueeze", [sin, "ax_2"], name="rope_sin")

    # attention bias [B,1,S,T]: 0 where key j is visible to query i (j <= past + i and
    # attention_mask[j] == 1), MASK_VALUE elsewhere. Added to the scores.
    s_len = b.op("Gather", [b.op("Shape", ["input_ids"], name="shape_ids"), "c_1"], name="seq_len", axis=0)
    t_len = b.op("Gather", [b.op("Shape", ["attention_mask"], name="shape_mask"), "c_1"], name="total_len", axis=0)
    past_len = b.op("Sub", [t_len, s_len], name="past_len")
    q_idx = b.op("Range", [past_len, t_len, "c_1"], name="q_idx")  # [S]
    k_idx = b.op("Range", ["c_0", t_len, "c_1"], name="k_idx")  # [T]
    causal = b.op(
        "LessOrEqual",
        [b.op("Unsqueeze", [k_idx, "ax_0"], name="k_idx2"), b.op("Unsqueeze", [q_idx, "ax_last"], name="q_idx2")],
        name="causal",
    )  # [S,T]
    keep = b.op("Cast", ["attention_mask"], name="mask_bool", to=TensorProto.BOOL)
    keep = b.op("Unsqueeze", [keep, "ax_1"], name="mask_bool3")  # [B,1,T]
    allowed = b.op("And", [causal, keep], name="allowed")  # [B,S,T]
    bias = b.op("Where", [allowed, "c_zero_f", "c_mask"], name="attn_bias3")
    bias = b.op("Unsqueeze", [bias, "ax_1"], name="attn_bias")  # [B,1,S,T]

    def rms_norm(inp: str, weight: np.ndarray, name: str) -> str:
        # the Pow/ReduceMean/Add/Sqrt/Div/Mul pattern that ORT fuses into SimplifiedLayerNormalization
        b.const(name + ".weight", weight)
        sq = b.op("Pow", [inp, "c_two"], name=name + "/pow")
        mean = b.op("ReduceMean", [sq], name=name + "/mean", axes=[-1], keepdims=1)
        std = b.op("Sqrt", [b.op("Add", [mean, "c_eps"], name=name + "/add_eps")], name=name + "/sqrt")
        normed = b.op("Div", [inp, std], name=name + "/div")
        return b.op("Mul", [normed, name + ".weight"], name=name + "/mul")

    for i in range(L):
        p = f"blk.{i}."
        n = f"layers.{i}"
        h = rms_norm(x, w[p + "attn_norm"], f"{n}.input_layernorm")
        qkv = linear(h, f"{n}.attn.qkv_proj", w[p + "qkv"])  # [B,S,960]
        qk, v = b.op("Split", [qkv, "split_qkv"], name=f"{n}.attn.split_qkv", n_out=2, axis=-1)
        qk = b.op("Reshape", [qk, "shape_qk_heads"], name=f"{n}.attn.qk_heads")  # [B,S,12,64]
        # RoPE (HF rotate_half convention) on q and k together
        swapped = b.op("Gather", [qk, "rope_swap_idx"], name=f"{n}.attn.rope_swap", axis=-1)
        qk = b.op(
            "Add",
            [
                b.op("Mul", [qk, "rope_cos"], name=f"{n}.attn.rope_mul_cos"),
                b.op("Mul", [swapped, "rope_sin"], name=f"{n}.attn.rope_mul_sin"),
            ],
            name=f"{n}.attn.rope",
        )
        q, k = b.op("Split", [qk, "split_qk"], name=f"{n}.attn.split_qk", n_out=2, axis=2)
        q = b.op("Transpose", [q], name=f"{n}.attn.q_t", perm=[0, 2, 1, 3])  # [B,9,S,64]
        k = b.op("Transpose", [k], name=f"{n}.attn.k_t", perm=[0, 2, 1, 3])  # [B,3,S,64]
        v = b.op("Reshape", [v, "shape_v_heads"], name=f"{n}.attn.v_heads")
        v = b.op("Transpose", [v], name=f"{n}.attn.v_t", perm=[0, 2, 1, 3])  # [B,3,S,64]
        k_all = b.op("Concat", [f"past_key_values.{i}.key", k], name=f"present.{i}.key", axis=2)
        v_all = b.op("Concat", [f"past_key_values.{i}.value", v], name=f"present.{i}.value", axis=2)
        # GQA without copying K/V: query heads h use kv head h // rep, so [B,9,S,64] viewed as
        # [B,3,rep*S,64] lines each group of rep query heads up with its kv head.
        qg = b.op("Reshape", [q, "shape_q_grouped"], name=f"{n}.attn.q_grouped")
        kt = b.op("Transpose", [k_all], name=f"{n}.attn.k_all_t", perm=[0, 1, 3, 2])  # [B,3,64,T]
        scores = b.op("MatMul", [qg, kt], name=f"{n}.attn.scores")  # [B,3,rep*S,T]
        scores = b.op("Reshape", [scores, "shape_scores_heads"], name=f"{n}.attn.scores_heads")  # [B,9,S,T]
        scores = b.op("Add", [scores, "attn_bias"], name=f"{n}.attn.scores_masked")
        probs = b.op("Softmax", [scores], name=f"{n}.attn.softmax", axis=-1)
        probs = b.op("Reshape", [probs, "shape_scores_grouped"], name=f"{n}.attn.probs_grouped")
        ctx = b.op("MatMul", [probs, v_all], name=f"{n}.attn.ctx")  # [B,3,rep*S,64]
        ctx = b.op("Reshape", [ctx, "shape_ctx_heads"], name=f"{n}.attn.ctx_heads")  # [B,9,S,64]
        ctx = b.op("Transpose", [ctx], name=f"{n}.attn.ctx_t", perm=[0, 2, 1, 3])  # [B,S,9,64]
        ctx = b.op("Reshape", [ctx, "shape_hidden"], name=f"{n}.attn.ctx_flat")
        attn = linear(ctx, f"{n}.attn.o_proj", w[p + "o"])
        x = b.op("Add", [x, attn], name=f"{n}.attn_residual")

        h = rms_norm(x, w[p + "ffn_norm"], f"{n}.post_attention_layernorm")
        gu = linear(h, f"{n}.mlp.gate_up_proj", w[p + "gate_up"])
        gate, up = b.op("Split", [gu, "split_ffn"], name=f"{n}.mlp.split", n_out=2, axis=-1)
        act = b.op("Mul", [gate, b.op("Sigmoid", [gate], name=f"{n}.mlp.sigmoid")], name=f"{n}.mlp.silu")
        act = b.op("Mul", [act, up], name=f"{n}.mlp.act_up")
        down = linear(act, f"{n}.mlp.down_proj", w[p + "down"])
        x = b.op("Add", [x, down], name=f"{n}.mlp_residual")

    x = rms_norm(x, w["final_norm"], "norm")
    linear(x, "logits", w["lm_head"])

    graph = helper.make_graph(b.nodes, "smollm2_135m_instruct", inputs, outputs, initializer=b.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)]
        + ([helper.make_opsetid("com.microsoft", 1)] if nbits else [])
        + ([helper.make_opsetid(FUSED_DOMAIN, 1)] if nbits and fused else []),
        producer_name="switchyard-convert-smollm2",
        producer_version=str(CONVERTER_VERSION),
    )
    model.ir_version = 8  # opset 17; readable by every ORT >= 1.13
    return model


def quantize_rtn(model: onnx.ModelProto) -> onnx.ModelProto:
    """--quant rtn: onnxruntime's MatMulNBitsQuantizer over the fp32 graph (round-to-nearest on
    the dequantized GGUF weights; needs the onnx-ir package). Measured worse than exact: README.md."""
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    q = MatMulNBitsQuantizer(
        model,
        bits=4,
        block_size=RTN_BLOCK_SIZE,
        is_symmetric=RTN_SYMMETRIC,
        accuracy_level=QUANT_ACCURACY_LEVEL,
    )
    q.process()
    out = q.model.model
    attention = ("attn.scores", "attn.ctx")  # activation x activation: nothing to quantize
    left = [n.name for n in out.graph.node if n.op_type == "MatMul" and not n.name.endswith(attention)]
    if left:
        raise RuntimeError(f"MatMuls left unquantized: {left[:5]}")
    return out


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """One self-contained file when it fits protobuf's 2 GiB, else weights in PATH.data."""
    if model.ByteSize() < 1_800_000_000:
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(
            model, str(path), save_as_external_data=True, all_tensors_to_external_data=True,
            location=path.name + ".data", size_threshold=1024,
        )


# ---------------------------------------------------------------------------------------------
# Tokenizer and generation config


def build_tokenizer_json(g: Gguf) -> dict:
    tokens = list(g.meta("tokenizer.ggml.tokens"))
    types = [int(t) for t in g.meta("tokenizer.ggml.token_type")]
    merges = list(g.meta("tokenizer.ggml.merges"))
    if g.meta("tokenizer.ggml.pre") != "smollm":
        raise ValueError(f"tokenizer.ggml.pre = {g.meta('tokenizer.ggml.pre')!r}, expected 'smollm'")
    if len(set(tokens)) != len(tokens):
        raise ValueError("duplicate tokens in the GGUF vocabulary")
    for m in merges:
        if m.count(" ") != 1:
            raise ValueError(f"malformed merge {m!r}")
    added = []
    for i, (tok, ty) in enumerate(zip(tokens, types)):
        if ty in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED):
            added.append({
                "id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": ty == TOKEN_TYPE_CONTROL,
            })
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        # as HF's SmolLM2 tokenizer.json (llama.cpp's "smollm" pre-tokenizer): each digit alone,
        # then GPT-2's byte-level regex split
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level],
        },
        # ByteLevel post-processing only adjusts offsets; no BOS/EOS is added (add_bos_token is false)
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": {tok: i for i, tok in enumerate(tokens)},
            "merges": merges,
        },
    }


def build_generation_json(g: Gguf, cfg: dict) -> dict:
    tokens = list(g.meta("tokenizer.ggml.tokens"))
    ids = {t: i for i, t in enumerate(tokens)}
    bos = int(g.meta("tokenizer.ggml.bos_token_id"))
    eos = int(g.meta("tokenizer.ggml.eos_token_id"))
    pad = int(g.meta("tokenizer.ggml.padding_token_id", eos))
    eos_ids = [eos]
    for t in ("<|im_end|>", "<|endoftext|>"):
        if t not in ids:
            raise ValueError(f"{t} not in the vocabulary")
        if ids[t] not in eos_ids:
            eos_ids.append(ids[t])
    if tokens[bos] != "<|im_start|>" or tokens[eos] != "<|im_end|>":
        raise ValueError(f"unexpected bos/eos: {tokens[bos]!r} / {tokens[eos]!r}")
    return {
        "bos_token_id": bos,
        "eos_token_ids": eos_ids,
        "pad_token_id": pad,
        "chat_template": g.meta("tokenizer.chat_template"),
        "num_layers": cfg["n_layer"],
        "num_kv_heads": cfg["n_kv_head"],
        "head_dim": cfg["head_dim"],
        "vocab_size": cfg["vocab"],
        "context_length": cfg["context_length"],
    }


# ---------------------------------------------------------------------------------------------


def session_options(model: Path, threads: int):
    """onnxruntime SessionOptions for a model file: with the custom-op library registered
    when one sits beside the model (--quant fused writes it there). For every Python
    consumer of the model (this script, its tests, the benchmarks)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    lib = model.parent / OPS_LIBRARY
    if lib.is_file():
        so.register_custom_ops_library(str(lib))
    return so


def smoke_test(path: Path, cfg: dict) -> np.ndarray:
    """Load the model with onnxruntime and run one prefill step plus one cached step."""
    import onnxruntime as ort

    so = session_options(path, 2)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    L, KV, D = cfg["n_layer"], cfg["n_kv_head"], cfg["head_dim"]
    ids = np.array([[1, 4093, 198, 19556, 2]], np.int64)  # arbitrary ids
    feed = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None],
    }
    for i in range(L):
        feed[f"past_key_values.{i}.key"] = np.zeros((1, KV, 0, D), np.float32)
        feed[f"past_key_values.{i}.value"] = np.zeros((1, KV, 0, D), np.float32)
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(None, feed)))
    assert out["logits"].shape == (1, ids.shape[1], cfg["vocab"]), out["logits"].shape
    assert out["present.0.key"].shape == (1, KV, ids.shape[1], D)
    nxt = int(out["logits"][0, -1].argmax())
    feed2 = {
        "input_ids": np.array([[nxt]], np.int64),
        "attention_mask": np.ones((1, ids.shape[1] + 1), np.int64),
        "position_ids": np.array([[ids.shape[1]]], np.int64),
    }
    for i in range(L):
        feed2[f"past_key_values.{i}.key"] = out[f"present.{i}.key"]
        feed2[f"past_key_values.{i}.value"] = out[f"present.{i}.value"]
    out2 = dict(zip(names, sess.run(None, feed2)))
    assert out2["present.29.value"].shape == (1, KV, ids.shape[1] + 1, D)
    if not (np.isfinite(out["logits"]).all() and np.isfinite(out2["logits"]).all()):
        raise RuntimeError(f"{path.name}: non-finite logits")
    return out["logits"]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(gguf_path: Path, out_dir: Path, keep_fp32: bool, quant: str = "fused", ops_library: Path | None = None) -> None:
    t_start = time.monotonic()
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the worker may run as another user
    try:
        log(f"reading {gguf_path}")
        g = Gguf(gguf_path)
        cfg = read_config(g)
        log(f"config: {cfg}")
        log("reading weights")
        w = load_weights(g, cfg)

        log("writing tokenizer.json and generation.json")
        with open(tmp / "tokenizer.json", "w", encoding="utf-8") as f:
            json.dump(build_tokenizer_json(g), f, ensure_ascii=False)
        with open(tmp / "generation.json", "w", encoding="utf-8") as f:
            json.dump(build_generation_json(g, cfg), f, ensure_ascii=False, indent=2)

        if keep_fp32:
            log("building model_fp32.onnx")
            model = build_model(w, cfg, nbits=False)
            log("saving model_fp32.onnx")
            save_model(model, tmp / "model_fp32.onnx")
            del model
        if quant == "fused":
            log(f"building model.onnx: the GGUF's Q4_1 blocks in {FUSED_DOMAIN}.{FUSED_OP}, "
                f"the lm_head in MatMulNBits (accuracy_level {QUANT_ACCURACY_LEVEL})")
            shutil.copyfile(ops_library, tmp / OPS_LIBRARY)
            model = build_model(w, cfg, nbits=True, fused=True)
        elif quant == "exact":
            log(f"building model.onnx: the GGUF's blocks in MatMulNBits (accuracy_level {QUANT_ACCURACY_LEVEL})")
            model = build_model(w, cfg, nbits=True)
        else:
            log("building the fp32 graph for the quantizer")
            model = build_model(w, cfg, nbits=False)
            log(f"quantizing with MatMulNBitsQuantizer (4 bits, block {RTN_BLOCK_SIZE}, "
                f"{'symmetric' if RTN_SYMMETRIC else 'asymmetric'}, accuracy_level {QUANT_ACCURACY_LEVEL})")
            model = quantize_rtn(model)
        del w
        log("saving model.onnx")
        save_model(model, tmp / "model.onnx")
        del model

        log("checking model.onnx with onnxruntime")
        smoke_test(tmp / "model.onnx", cfg)
        if keep_fp32:
            log("checking model_fp32.onnx with onnxruntime")
            smoke_test(tmp / "model_fp32.onnx", cfg)

        log("hashing the source GGUF")
        provenance = {
            "converter": "infra/models/convert_smollm2.py",
            "converter_version": CONVERTER_VERSION,
            "gguf": str(gguf_path.resolve()),
            "gguf_bytes": gguf_path.stat().st_size,
            "gguf_sha256": sha256(gguf_path),
            "opset": OPSET,
            "quantization": (
                {"method": "fused", "op": {"layers": f"{FUSED_DOMAIN}.{FUSED_OP}", "lm_head": "com.microsoft.MatMulNBits"},
                 "ops_library": OPS_LIBRARY, "block_size": QK, "bits": {"layers": 4, "lm_head": 8},
                 "accuracy_level": QUANT_ACCURACY_LEVEL}
                if quant == "fused" else
                {"method": "exact", "op": "com.microsoft.MatMulNBits", "block_size": QK,
                 "bits": {"layers": 4, "lm_head": 8}, "accuracy_level": QUANT_ACCURACY_LEVEL}
                if quant == "exact" else
                {"method": "rtn", "op": "com.microsoft.MatMulNBits", "block_size": RTN_BLOCK_SIZE,
                 "bits": 4, "symmetric": RTN_SYMMETRIC, "accuracy_level": QUANT_ACCURACY_LEVEL}
            ),
            "files": {p.name: p.stat().st_size for p in sorted(tmp.iterdir())},
            "seconds": round(time.monotonic() - t_start, 1),
        }
        with open(tmp / "conversion.json", "w", encoding="utf-8") as f:
            json.dump(provenance, f, indent=2)

        # swap in: the old directory (if any) is moved aside first, so DIR is either the old
        # complete output or the new complete one, never a mix
        old = None
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in sorted(out_dir.iterdir()))
    log(f"done in {time.monotonic() - t_start:.1f}s: {out_dir} ({sizes})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", required=True, type=Path, help="SmolLM2-135M-Instruct GGUF")
    ap.add_argument("--out", required=True, type=Path, help="output directory (replaced atomically)")
    ap.add_argument("--keep-fp32", action="store_true", help="also write model_fp32.onnx (unquantized)")
    ap.add_argument(
        "--quant", choices=["fused", "exact", "rtn"], default="fused",
        help="fused (default): the GGUF's own Q4_1 blocks in the project's MatMulQ4_1 op "
        "(needs --ops-library) and its Q8_0 lm_head in MatMulNBits; exact: every block in "
        "onnxruntime's own ops (MatMulNBits plus a correction matmul per layer, ~20 %% slower); "
        "rtn: onnxruntime's MatMulNBitsQuantizer re-quantizing the dequantized weights to 4 bits "
        "(much less accurate; needs onnx-ir)",
    )
    ap.add_argument(
        "--ops-library", type=Path,
        help=f"the custom-op library for --quant fused ({OPS_LIBRARY}, from "
        "`cargo build --release -p switchyard-blockops`); copied beside model.onnx",
    )
    args = ap.parse_args(argv)
    if not args.gguf.is_file():
        ap.error(f"no such file: {args.gguf}")
    if args.quant == "fused" and (args.ops_library is None or not args.ops_library.is_file()):
        ap.error(
            "--quant fused needs --ops-library PATH to an existing "
            f"{OPS_LIBRARY} (cargo build --release -p switchyard-blockops), or use --quant exact"
        )
    convert(args.gguf, args.out, args.keep_fp32, args.quant, args.ops_library)
    return 0


if __name__ == "__main__":
    sys.exit(main())
