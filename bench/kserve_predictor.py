"""The peer of `make bench`: KServe's Python ModelServer with the smallest custom predictor a
KServe user would write for this model.

It serves the same published model.tflite with LiteRT and decodes KServe V1 requests
`{"instances": [{"b64": "..."}]}` with plain Pillow (open, convert to the model's channels,
resize), answering `{"predictions": [[probabilities], ...]}`. It runs in a virtualenv of its own
(bench/run.py creates it with `pip install kserve ai-edge-litert pillow`); nothing here is a
dependency of the project.

Run: python bench/kserve_predictor.py --model_file model.tflite --model_name digits \
         --http_port 8080 --workers 2
"""

from __future__ import annotations

import argparse
import base64
import io
from typing import Any

import kserve
import numpy as np
from ai_edge_litert.interpreter import Interpreter
from PIL import Image


class DigitsModel(kserve.Model):
    """model.tflite on LiteRT behind KServe's V1 predict."""

    def __init__(self, name: str, model_file: str) -> None:
        super().__init__(name)
        self.model_file = model_file
        self.interpreter: Any = None
        self.load()

    def load(self) -> bool:
        self.interpreter = Interpreter(model_path=self.model_file, num_threads=1)
        self.interpreter.allocate_tensors()
        detail = self.interpreter.get_input_details()[0]
        self.input_index = detail["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        _, self.height, self.width, self.channels = (int(v) for v in detail["shape"])
        self.ready = True
        return self.ready

    # With --workers > 1 KServe spawns its workers and hands each a pickled copy of the model:
    # an interpreter does not pickle, so each worker loads its own.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "interpreter": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.load()

    def predict(self, payload: dict, headers: dict[str, str] | None = None) -> dict:
        mode = "L" if self.channels == 1 else "RGB"
        rows = []
        for instance in payload["instances"]:
            image = Image.open(io.BytesIO(base64.b64decode(instance["b64"])))
            image = image.convert(mode).resize((self.width, self.height))
            batch = np.asarray(image, dtype=np.float32).reshape(
                1, self.height, self.width, self.channels
            )
            self.interpreter.set_tensor(self.input_index, batch)
            self.interpreter.invoke()
            rows.append(self.interpreter.get_tensor(self.output_index)[0].tolist())
        return {"predictions": rows}


if __name__ == "__main__":  # guarded: KServe's spawned workers import this module again
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_file", required=True)
    args, _ = parser.parse_known_args()
    model = DigitsModel(args.model_name, args.model_file)
    kserve.ModelServer().start([model])
