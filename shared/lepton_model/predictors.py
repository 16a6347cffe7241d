"""Runtimes that turn a batch of model inputs into class probabilities.

A runtime is just load + predict (as in MLServer): `predict(batch) -> probabilities`.
LiteRT runs the exported flatbuffer and is the default; TensorFlow/Keras is the fallback.
Neither loader executes code from the artifact: LiteRT reads a flatbuffer, Keras loads with
`safe_mode=True` (no lambda deserialisation).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from lepton_model.artifacts import (
    KERAS_FILE,
    TFLITE_FILE,
    litert_available,
    tensorflow_available,
)
from lepton_model.errors import ArtifactError, RuntimeUnavailableError

RuntimeName = Literal["auto", "litert", "tensorflow"]


class Predictor(Protocol):
    """What every runtime offers."""

    runtime: str

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(n, h, w, c) float32 pixels in 0..255 -> (n, classes) float32 probabilities."""
        ...


@dataclass(frozen=True)
class _Slot:
    """One interpreter sized for one batch size, and its tensor indices."""

    interpreter: Any
    input_index: int
    output_index: int


class LiteRTPredictor:
    """LiteRT interpreters, one set per calling thread, one interpreter per batch size.

    A LiteRT Interpreter is not thread-safe. Sharing one behind a lock makes server threads
    queue behind whichever holder lost the GIL; giving each thread its own interpreters (the
    model is small) removes the lock altogether. Resizing an input re-plans memory, so a few
    recently used batch sizes keep an interpreter each.
    """

    runtime = "litert"

    def __init__(self, model: Path | bytes, max_interpreters: int = 4) -> None:
        self._content = Path(model).read_bytes() if isinstance(model, (str, Path)) else model
        self._max = max_interpreters
        self._local = threading.local()
        first = self._slot(1).interpreter
        self.input_shape = tuple(int(v) for v in first.get_input_details()[0]["shape"][1:])
        self.num_classes = int(first.get_output_details()[0]["shape"][-1])

    def _new_interpreter(self, batch_size: int) -> _Slot:
        from ai_edge_litert.interpreter import Interpreter

        try:
            interpreter = Interpreter(model_content=self._content, num_threads=1)
        except (ValueError, RuntimeError) as exc:
            raise ArtifactError(f"the .tflite model cannot be loaded ({exc})") from exc
        detail = interpreter.get_input_details()[0]
        if int(detail["shape"][0]) != batch_size:
            shape = [batch_size, *(int(v) for v in detail["shape"][1:])]
            interpreter.resize_tensor_input(detail["index"], shape, strict=False)
        interpreter.allocate_tensors()
        return _Slot(
            interpreter, int(detail["index"]), int(interpreter.get_output_details()[0]["index"])
        )

    def _slot(self, batch_size: int) -> _Slot:
        slots: OrderedDict[int, _Slot] | None = getattr(self._local, "slots", None)
        if slots is None:
            slots = self._local.slots = OrderedDict()
        slot = slots.get(batch_size)
        if slot is None:
            slot = slots[batch_size] = self._new_interpreter(batch_size)
            while len(slots) > self._max:
                slots.popitem(last=False)
        else:
            slots.move_to_end(batch_size)
        return slot

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        slot = self._slot(int(batch.shape[0]))
        slot.interpreter.set_tensor(slot.input_index, batch)
        slot.interpreter.invoke()
        return np.array(slot.interpreter.get_tensor(slot.output_index))


class KerasPredictor:
    """The Keras model called directly (model.predict() costs ~100 ms per call in Keras 3)."""

    runtime = "tensorflow"

    def __init__(self, path: Path) -> None:
        import keras

        try:
            self._model = keras.saving.load_model(Path(path), compile=False, safe_mode=True)
        except (ValueError, OSError, TypeError) as exc:
            raise ArtifactError(f"the .keras model cannot be loaded ({exc})") from exc
        self.input_shape = tuple(int(v) for v in self._model.input_shape[1:])
        self.num_classes = int(self._model.output_shape[-1])
        self._lock = threading.Lock()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        with self._lock:
            return np.asarray(self._model(batch, training=False))


def load_predictor(directory: Path, runtime: RuntimeName = "auto") -> Predictor:
    """Load the best runtime available for an artifact directory.

    `auto` takes LiteRT when it is installed and model.tflite exists, else TensorFlow with
    model.keras.
    """
    directory = Path(directory)
    tflite, keras_file = directory / TFLITE_FILE, directory / KERAS_FILE
    if runtime not in ("auto", "litert", "tensorflow"):
        raise RuntimeUnavailableError(f"unknown runtime {runtime!r}; use litert or tensorflow")
    if runtime in ("auto", "litert") and tflite.exists() and litert_available():
        return LiteRTPredictor(tflite)
    if runtime == "litert":
        if not litert_available():
            raise RuntimeUnavailableError("LiteRT (ai-edge-litert) is not installed")
        raise ArtifactError(f"{tflite} is missing")
    if keras_file.exists():
        if not tensorflow_available():
            raise RuntimeUnavailableError(
                "the model has no usable .tflite file and TensorFlow is not installed"
            )
        return KerasPredictor(keras_file)
    raise ArtifactError(f"{directory} holds neither {TFLITE_FILE} nor {KERAS_FILE}")
