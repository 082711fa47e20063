"""TorchServe handler for the benchmark's TorchScript model (bench/run.sh, figure B).

TorchServe's own base_handler cannot turn a JSON body into a tensor, and its kservev2 envelope
reads only the first request of a batch. This handler takes the raw batch TorchServe hands it
(one entry per HTTP request, body as bytes or parsed JSON), decodes every Open Inference
Protocol v2 request, runs ONE forward pass over the concatenated rows (as maas-backend's dynamic
batcher does) and answers each request with its own OIP v2 response.

The kservev2 envelope (`service_envelope=kservev2`, which makes TorchServe route
`POST /v2/models/{m}/infer`) is replaced at import time by a pass-through that keeps the batch
whole: see `_patch_kservev2_envelope`.

Threads: `MAAS_BENCH_TS_THREADS` (default 1) intra-op threads, like maas-backend's
`intra_op_threads`.
"""
import json
import os

import numpy as np
import torch


def _patch_kservev2_envelope():
    try:
        from ts.torch_handler.request_envelope import kservev2
    except ImportError:  # not under TorchServe
        return
    kservev2.KServev2Envelope.parse_input = lambda self, data: data
    kservev2.KServev2Envelope.format_output = lambda self, data: data


_patch_kservev2_envelope()

_model = None
_name = "model"
_version = "1"


def _initialize(context):
    global _model, _name, _version
    torch.set_num_threads(int(os.environ.get("MAAS_BENCH_TS_THREADS", "1")))
    model_dir = context.system_properties.get("model_dir")
    manifest = context.manifest or {}
    serialized = (manifest.get("model") or {}).get("serializedFile") or "model.pt"
    _model = torch.jit.load(os.path.join(model_dir, serialized), map_location="cpu").eval()
    _name = (manifest.get("model") or {}).get("modelName", _name)
    _version = str((manifest.get("model") or {}).get("modelVersion", _version))


def _decode(entry):
    body = entry.get("data") or entry.get("body")
    if isinstance(body, (bytes, bytearray)):
        body = json.loads(body)
    inp = body["inputs"][0]
    shape = [int(d) for d in inp["shape"]]
    arr = np.asarray(inp["data"], dtype=np.float32).reshape(shape)
    return body.get("id"), arr


def handle(data, context):
    if _model is None:
        _initialize(context)
    if data is None:
        return None
    ids, arrays = zip(*(_decode(entry) for entry in data))
    x = torch.from_numpy(np.concatenate(arrays, axis=0))
    with torch.inference_mode():
        y = _model(x).contiguous().numpy()
    # Compact JSON bytes (TorchServe would otherwise serialize a dict with indent=2).
    answers, start = [], 0
    for idx, (rid, arr) in enumerate(zip(ids, arrays)):
        rows = arr.shape[0]
        part = y[start:start + rows]
        start += rows
        answer = {"model_name": _name, "model_version": _version,
                  "outputs": [{"name": "output", "datatype": "FP32", "shape": list(part.shape),
                               "data": part.reshape(-1).tolist()}]}
        if rid:
            answer["id"] = rid
        answers.append(json.dumps(answer, separators=(",", ":")).encode())
        context.set_response_content_type(idx, "application/json")
    return answers
