"""switchyard.MatMulQ4_1 through Python onnxruntime, loaded from the crate's cdylib the way
the converter and its tests load it (`register_custom_ops_library`).

The reference is the graph the op replaced: MatMulNBits (accuracy_level 4) on the centred
nibbles plus the per-block constant as an fp32 matmul of the block sums — the same
arithmetic, so the two must agree to float rounding — and the float64 product with the
dequantized weights, within the int8 activations' rounding.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

REPO = Path(__file__).resolve().parents[3]
QK = 32


@pytest.fixture(scope="module")
def library() -> Path:
    sys.path.insert(0, str(REPO / "infra" / "models"))
    import setup  # noqa: PLC0415 - infra/models/setup.py builds it with cargo

    return setup.ops_library()


def q4_1(n: int, k: int, seed: int):
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 16, size=(n, k // QK, QK), dtype=np.uint8)
    d = (0.002 + 0.03 * rng.random((n, k // QK))).astype(np.float16)
    m = (-(0.005 + 0.25 * rng.random((n, k // QK)))).astype(np.float16)
    return q, d, m


def dense(q, d, m) -> np.ndarray:
    w = d.astype(np.float64)[..., None] * q + m.astype(np.float64)[..., None]
    return w.reshape(q.shape[0], -1)  # [N, K]


def model(nodes, inits, k: int, n: int, opsets) -> bytes:
    graph = helper.make_graph(
        nodes, "t",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)] + opsets)
    m.ir_version = 8
    return m.SerializeToString()


def fused_model(q, d, m) -> bytes:
    n, k = q.shape[0], q.shape[1] * QK
    half = QK // 2
    qs = (q[..., :half] | (q[..., half:] << 4)).reshape(n, -1)
    inits = [
        helper.make_tensor("B", TensorProto.UINT8, qs.shape, qs.tobytes(), raw=True),
        helper.make_tensor("S", TensorProto.FLOAT16, d.shape, d.tobytes(), raw=True),
        helper.make_tensor("M", TensorProto.FLOAT16, m.shape, m.tobytes(), raw=True),
    ]
    node = helper.make_node("MatMulQ4_1", ["A", "B", "S", "M"], ["Y"], domain="switchyard", K=k, N=n)
    return model([node], inits, k, n, [helper.make_opsetid("switchyard", 1)])


def reference_model(q, d, m) -> bytes:
    """MatMulNBits(d·(q − 8)) + blocksum(A) @ (m + 8d)ᵀ: the previous exact graph's ops."""
    n, k = q.shape[0], q.shape[1] * QK
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    corr = (m.astype(np.float32) + 8 * d.astype(np.float32)).T.copy()  # [K/32, N]
    inits = [
        helper.make_tensor("B", TensorProto.UINT8, packed.shape, packed.tobytes(), raw=True),
        helper.make_tensor("S", TensorProto.FLOAT, [n * k // QK], d.astype(np.float32).tobytes(), raw=True),
        helper.make_tensor("C", TensorProto.FLOAT, corr.shape, corr.tobytes(), raw=True),
        helper.make_tensor("shape", TensorProto.INT64, [4], np.array([0, 0, -1, QK], np.int64).tobytes(), raw=True),
        helper.make_tensor("axis", TensorProto.INT64, [1], np.array([-1], np.int64).tobytes(), raw=True),
    ]
    nodes = [
        helper.make_node("MatMulNBits", ["A", "B", "S"], ["y"], domain="com.microsoft",
                         K=k, N=n, bits=4, block_size=QK, accuracy_level=4),
        helper.make_node("Reshape", ["A", "shape"], ["blocks"]),
        helper.make_node("ReduceSum", ["blocks", "axis"], ["sums"], keepdims=0),
        helper.make_node("MatMul", ["sums", "C"], ["c"]),
        helper.make_node("Add", ["y", "c"], ["Y"]),
    ]
    return model(nodes, inits, k, n, [helper.make_opsetid("com.microsoft", 1)])


def session(blob: bytes, library: Path | None, threads: int = 2) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if library is not None:
        so.register_custom_ops_library(str(library))
    return ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(("n", "k", "shape"), [(96, 160, (2, 5)), (1536, 576, (1, 1)), (576, 1536, (3, 4)), (33, 64, (1, 9))])
def test_agrees_with_the_onnxruntime_ops_it_replaced(library, n, k, shape):
    q, d, m = q4_1(n, k, seed=n + k)
    x = np.random.default_rng(k).normal(size=(*shape, k)).astype(np.float32)
    (got,) = session(fused_model(q, d, m), library).run(None, {"A": x})
    (ref,) = session(reference_model(q, d, m), None).run(None, {"A": x})
    assert got.shape == (*shape, n)
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() <= 1e-5 * scale * np.sqrt(k), np.abs(got - ref).max() / scale

    exact = x.astype(np.float64) @ dense(q, d, m).T
    # int8 activations: at most half a step (max|x|/127 per block) per input, times |w|
    bound = (np.abs(dense(q, d, m)).sum(1) * np.abs(x).max() / 254)[None]
    assert (np.abs(got - exact) <= bound).all()
    # and far closer than that bound on average: the rounding errors cancel
    assert np.abs(got - exact).mean() < 0.05 * bound.mean()


def test_threads_do_not_change_the_result(library):
    q, d, m = q4_1(200, 576, seed=3)
    x = np.random.default_rng(4).normal(size=(12, 576)).astype(np.float32)
    blob = fused_model(q, d, m)
    (one,) = session(blob, library, threads=1).run(None, {"A": x})
    (two,) = session(blob, library, threads=2).run(None, {"A": x})
    np.testing.assert_array_equal(one, two)


def test_empty_input_gives_an_empty_output(library):
    q, d, m = q4_1(8, 64, seed=5)
    (y,) = session(fused_model(q, d, m), library).run(None, {"A": np.zeros((0, 64), np.float32)})
    assert y.shape == (0, 8)


def test_a_wrong_input_width_is_an_error_not_a_crash(library):
    q, d, m = q4_1(8, 64, seed=6)
    sess = session(fused_model(q, d, m), library)
    with pytest.raises(Exception, match=r"MatMulQ4_1.*last dimension must be K = 64"):
        sess.run(None, {"A": np.zeros((2, 96), np.float32)})
    # the session still works afterwards
    (y,) = sess.run(None, {"A": np.ones((2, 64), np.float32)})
    np.testing.assert_allclose(y[0], dense(q, d, m).sum(1), rtol=1e-4)


def test_without_the_library_the_model_does_not_load():
    q, d, m = q4_1(8, 64, seed=7)
    with pytest.raises(Exception, match="MatMulQ4_1"):
        session(fused_model(q, d, m), None)
