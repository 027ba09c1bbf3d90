"""A scoring script that follows the Azure ML entry-script contract."""

import json

model = None


def init():
    global model
    model = "loaded"


def run(raw_data):
    return {"echo": json.loads(raw_data), "model": model}
