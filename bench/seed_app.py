"""The seed design, rebuilt as the article describes it: the baseline to beat.

A Flask service with /infer that calls TensorFlow's `model.predict()` on every request, one
image at a time, with the model file loaded at start. Same model and same images as ours.
Run: python bench/seed_app.py MODEL.keras PORT
"""

import io
import sys

import numpy as np
from flask import Flask, jsonify, request
from PIL import Image


def create(model_path: str) -> Flask:
    import keras

    model = keras.saving.load_model(model_path, compile=False)
    height, width, channels = model.input_shape[1:]
    app = Flask(__name__)

    @app.route("/infer", methods=["POST"])
    def infer():
        image = Image.open(io.BytesIO(request.get_data())).convert("L" if channels == 1 else "RGB")
        pixels = np.asarray(image.resize((width, height)), dtype=np.float32)
        batch = pixels.reshape(1, height, width, channels)
        probabilities = model.predict(batch, verbose=0)[0]
        return jsonify(
            {"prediction": int(np.argmax(probabilities)), "probabilities": probabilities.tolist()}
        )

    @app.route("/health", methods=["GET"])
    def health():
        return "ok"

    return app


if __name__ == "__main__":
    create(sys.argv[1]).run(host="127.0.0.1", port=int(sys.argv[2]), threaded=True)
