"""The second peer of `make bench`: MLServer with the smallest custom runtime for this model.

The same published model.tflite on LiteRT; the Open Inference Protocol (V2) request a client
sends for encoded images, one BYTES tensor of base64 strings, decoded with plain Pillow (open,
convert to the model's channels, resize); the answer is one FP32 tensor of probabilities.
bench/run.py installs MLServer into a virtualenv of its own and writes the settings that point
`mlserver start` here; nothing here is a dependency of the project.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput
from PIL import Image


class DigitsRuntime(MLModel):
    """model.tflite on LiteRT behind V2 infer (MLServer loads it in each parallel worker)."""

    async def load(self) -> bool:
        self.interpreter = Interpreter(model_path=self.settings.parameters.uri, num_threads=1)
        self.interpreter.allocate_tensors()
        detail = self.interpreter.get_input_details()[0]
        self.input_index = detail["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        _, self.height, self.width, self.channels = (int(v) for v in detail["shape"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        mode = "L" if self.channels == 1 else "RGB"
        rows = []
        for encoded in payload.inputs[0].data.root:
            data = base64.b64decode(encoded)
            image = Image.open(io.BytesIO(data)).convert(mode).resize((self.width, self.height))
            batch = np.asarray(image, dtype=np.float32).reshape(
                1, self.height, self.width, self.channels
            )
            self.interpreter.set_tensor(self.input_index, batch)
            self.interpreter.invoke()
            rows.append(self.interpreter.get_tensor(self.output_index)[0])
        probabilities = np.stack(rows)
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                ResponseOutput(
                    name="probabilities",
                    shape=list(probabilities.shape),
                    datatype="FP32",
                    data=probabilities.flatten().tolist(),
                )
            ],
        )
