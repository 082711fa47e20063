"""Drives the backend with PyPI's tritonclient[http], unmodified, and prints one JSON object of
what it saw; backend/tests/protocol.rs starts the server, runs this script and asserts.

Usage: tritonclient_check.py HOST:PORT MODEL DIGITS_CSV_GZ
"""
import gzip
import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

url, model, data = sys.argv[1:4]
with gzip.open(data, "rt") as f:
    table = np.loadtxt(f, delimiter=",", max_rows=16)
x = table[:, :64].astype(np.float32)
labels = table[:, 64].astype(int)

client = httpclient.InferenceServerClient(url=url)
out = {"labels": labels.tolist()}
out["server_live"] = client.is_server_live()
out["server_ready"] = client.is_server_ready()
out["model_ready"] = client.is_model_ready(model)
out["version_ready"] = client.is_model_ready(model, model_version="1")
out["server_metadata"] = client.get_server_metadata()
out["model_metadata"] = client.get_model_metadata(model)
out["model_config"] = client.get_model_config(model)


def argmax(result):
    return result.as_numpy("probabilities").argmax(axis=1).tolist()


# Defaults: binary input, binary outputs (binary_data_output), a request id.
inp = httpclient.InferInput("input", list(x.shape), "FP32")
inp.set_data_from_numpy(x)
result = client.infer(model, [inp], request_id="tc-binary")
out["binary"] = {
    "argmax": argmax(result),
    "id": result.get_response().get("id"),
    "shape": result.get_response()["outputs"][0]["shape"],
    "parameters": result.get_response()["outputs"][0].get("parameters"),
}

# JSON input and JSON output.
inp = httpclient.InferInput("input", list(x.shape), "FP32")
inp.set_data_from_numpy(x, binary_data=False)
requested = httpclient.InferRequestedOutput("probabilities", binary_data=False)
result = client.infer(model, [inp], outputs=[requested], model_version="1")
out["json"] = {
    "argmax": argmax(result),
    "has_data": "data" in result.get_response()["outputs"][0],
    "version": result.get_response()["model_version"],
}

# Other datatypes, binary: the same pixels as UINT8, FP16, FP64, INT64.
out["datatypes"] = {}
for name, dtype in [("UINT8", np.uint8), ("FP16", np.float16), ("FP64", np.float64), ("INT64", np.int64)]:
    inp = httpclient.InferInput("input", list(x.shape), name)
    inp.set_data_from_numpy(x.astype(dtype))
    out["datatypes"][name] = argmax(client.infer(model, [inp]))

# Errors come back as InferenceServerException with the server's message.
errors = {}
inp = httpclient.InferInput("input", [1, 63], "FP32")
inp.set_data_from_numpy(np.zeros((1, 63), dtype=np.float32))
try:
    client.infer(model, [inp])
except InferenceServerException as e:
    errors["shape"] = e.message()
try:
    client.get_model_metadata("nope")
except InferenceServerException as e:
    errors["unknown_model"] = e.message()
out["errors"] = errors

print(json.dumps(out))
