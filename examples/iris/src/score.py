"""Iris classifier: an Azure ML entry script (init() once, run(raw_data) per request).

Needs only onnxruntime and numpy. The model is the ONNX file written by ../train.py; the
inference server sets AZUREML_MODEL_DIR to the folder that holds the model folder `model/`.

Request:  {"data": [[sepal_length, sepal_width, petal_length, petal_width], ...]}   (cm)
Response: {"predictions": ["setosa", ...],
           "probabilities": [[p_setosa, p_versicolor, p_virginica], ...]}
A bad request raises ValueError; the inference server answers it with a 500 and logs the message.
"""

import json
import logging
import os

import numpy as np
import onnxruntime as ort

N_FEATURES = 4
logger = logging.getLogger(__name__)

# Set once by init(), read by every run().
session = None
input_name = None
output_names = None


def init():
    global session, input_name, output_names
    level = getattr(logging, os.environ.get("LOG_LEVEL", "info").upper(), None)
    logger.setLevel(level if isinstance(level, int) else logging.INFO)
    path = os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "model.onnx")

    # A small model: one thread per operator and no parallel operators is fastest, and leaves
    # the other cores to the other workers.
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])

    input_name = session.get_inputs()[0].name
    # Outputs of a skl2onnx classifier without zipmap: [label tensor, probability matrix].
    # The labels are the class names the model was trained on (see train.py).
    output_names = [output.name for output in session.get_outputs()]
    logger.info("loaded %s (input %r, outputs %r)", path, input_name, output_names)


def run(raw_data):
    try:
        rows = json.loads(raw_data)["data"]
    except json.JSONDecodeError as error:
        raise ValueError(f"request body is not JSON: {error}") from None
    except (KeyError, TypeError):
        raise ValueError('request must be a JSON object with a "data" field: {"data": [[...]]}') from None

    try:
        features = np.asarray(rows, dtype=np.float32)
    except (ValueError, TypeError):
        raise ValueError(
            f'"data" must be a list of rows of {N_FEATURES} numbers '
            "(sepal_length, sepal_width, petal_length, petal_width)"
        ) from None
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] != N_FEATURES:
        raise ValueError(
            f'"data" must be a non-empty list of rows of {N_FEATURES} numbers '
            f"(sepal_length, sepal_width, petal_length, petal_width); got shape {features.shape}"
        )
    if not np.isfinite(features).all():
        raise ValueError('"data" holds NaN or infinite values')

    labels, probabilities = session.run(output_names, {input_name: features})
    return {
        "predictions": labels.tolist(),
        # float64 before rounding: a rounded float32 prints as 0.97663098573684692.
        "probabilities": probabilities.astype(np.float64).round(6).tolist(),
    }
