"""The decoder's memory and time under hostile images, measured in a fresh process each.

What must hold: every image is classified or refused with an ImageError within 5 s; what
decoding adds to the process's peak resident memory (VmHWM) stays within `decode_cost`, the
figure the decoder decides from the header before decoding, and under the default per-decode
limit; a refusal costs almost nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hostile_images import HOSTILE_IMAGES, hostile_image
from lepton_model.imaging import DEFAULT_LIMITS

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
SECONDS = 5.0
SLACK = 24 * MiB  # the allocator's and Python's own share of a decode
REFUSAL_COST = 16 * MiB

_DECODE = """
import json, sys, time
from pathlib import Path
from PIL import Image
from lepton_model.errors import ImageError
from lepton_model.imaging import decode_image, decode_cost, open_image

def peak():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

data = Path(sys.argv[1]).read_bytes()
Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the resident memory now
before = peak()
started = time.perf_counter()
outcome = {}
try:
    outcome["shape"] = list(decode_image(data).shape)
    image = open_image(data)
    header = image.size
    if image.format in ("JPEG", "MPO"):
        image.draft(image.mode if image.mode != "RGB" else "RGB", (28, 28))
    outcome["cost"] = decode_cost(image, header)
except ImageError as exc:
    outcome["error"] = type(exc).__name__
    outcome["message"] = str(exc)
outcome["seconds"] = time.perf_counter() - started
outcome["added"] = peak() - before
print(json.dumps(outcome))
"""


def _decode_in_fresh_process(data: bytes, tmp_path: Path) -> dict:
    path = tmp_path / "image.bin"
    path.write_bytes(data)
    done = subprocess.run(
        [sys.executable, "-c", _DECODE, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    outcome = json.loads(done.stdout)
    print(  # with -s: the numbers behind the bounds
        f"\n{outcome.get('shape') or outcome.get('error')}: +{outcome['added'] / MiB:.0f} MiB "
        f"(cost {outcome.get('cost', 0) / MiB:.0f} MiB), {outcome['seconds']:.2f} s"
    )
    return outcome


@pytest.mark.parametrize("name", list(HOSTILE_IMAGES))
def test_a_hostile_image_is_decoded_or_refused_within_its_bounds(name: str, tmp_path: Path) -> None:
    hostile = HOSTILE_IMAGES[name]
    outcome = _decode_in_fresh_process(hostile_image(name), tmp_path)

    assert outcome["seconds"] < SECONDS
    if hostile.outcome == "classified":
        assert outcome.get("shape") == [28, 28, 1], outcome.get("message")
        assert outcome["added"] <= outcome["cost"] + SLACK
        assert outcome["cost"] <= DEFAULT_LIMITS.max_decode_bytes
    else:
        assert "error" in outcome, f"{name} was decoded"
        assert outcome["added"] <= REFUSAL_COST
