"""Serve bench/bare (a constant answer) exactly as `lepton serve` serves a function: the same
parliament app and waitress settings, so the difference to the inference function is the work.
Run: python bench/serve_bare.py PORT"""

import os
import sys
from pathlib import Path

from lepton_runtime.http.workers import serve
from lepton_runtime.settings import Settings

if __name__ == "__main__":
    settings = Settings.from_env({**os.environ, "PORT": sys.argv[1]})
    serve(Path(__file__).parent / "bare", settings)
