"""Reference sentence embeddings with Python onnxruntime, for the parity test.

Reads {"model": path, "threads": n, "input_ids": [[...]], "attention_mask": [[...]],
"token_type_ids": [[...]]} (already padded) on stdin; prints {"vectors": [[...]]}:
mean pooling over the mask, then L2 normalisation, in float32 as the Rust worker does.
"""

import json
import sys

import numpy as np
import onnxruntime as ort

req = json.load(sys.stdin)
opts = ort.SessionOptions()
opts.intra_op_num_threads = req.get("threads", 1)
sess = ort.InferenceSession(req["model"], opts, providers=["CPUExecutionProvider"])
feeds = {k: np.array(req[k], dtype=np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
(hidden,) = sess.run(["last_hidden_state"], feeds)
mask = feeds["attention_mask"].astype(np.float32)[:, :, None]
pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
json.dump({"vectors": pooled.astype(np.float32).tolist()}, sys.stdout)
