"""How much structure an encoded image has, counted before Pillow parses it.

Pillow parses containers in Python, one chunk, marker, block or strip at a time, at a few
microseconds each: 15 MB of empty PNG chunks, JPEG markers or GIF comment blocks take it 4 to
16 s, and a TIFF of 2 million one-row strips 20 s and 770 MB before a pixel is decoded. Pillow
has no limit on any of these, so they are counted here, by walking only the container's
headers, and an image with more than `max_segments` of them is refused. Real images have a few
dozen (a large PNG a few thousand IDAT chunks). Walking stops at the limit, so a hostile file
costs this module at most `max_segments` steps.

Written by hand because no library checks this; each walker reads only lengths and markers and
stops at the first thing it does not understand, leaving the verdict on validity to Pillow.
"""

from __future__ import annotations

from lepton_model.errors import ImageTooLargeError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_START = b"\xff\xd8"
_JPEG_SCAN = b"\xff\xda"
_GIF_SIGNATURES = (b"GIF87a", b"GIF89a")
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*")
_TIFF_OFFSET_TAGS = (273, 324)  # StripOffsets, TileOffsets
# Each scan of a progressive JPEG is a pass over every coefficient of the image; real files have
# about ten. (libjpeg-turbo's own TurboJPEG API stops at 500; Pillow uses the libjpeg API.)
MAX_JPEG_SCANS = 256
# Pillow decodes run-length BMPs in Python, about 0.5 us a code: they count in hundreds.
RUNS_PER_SEGMENT = 100


def check_structure(data: bytes, max_segments: int) -> None:
    """Raise ImageTooLargeError when the container holds more than `max_segments` parts."""
    limit = max_segments
    if data.startswith(_PNG_SIGNATURE):
        found, what = _png_chunks(data, limit), "chunks"
    elif data.startswith(_JPEG_START):
        found, what = _jpeg_segments(data, limit), "markers, fill bytes or scans"
    elif data.startswith(_GIF_SIGNATURES):
        found, what = _gif_blocks(data, limit), "blocks before its first frame"
    elif data.startswith(_TIFF_SIGNATURES):
        found, what = _tiff_parts(data, limit), "strips, tiles or tags"
    elif data.startswith(b"BM"):
        limit = max_segments * RUNS_PER_SEGMENT
        found, what = _bmp_runs(data), "run-length codes"
    else:
        return
    if found > limit:
        raise ImageTooLargeError(f"the image has more than {limit} {what}; the limit is {limit}")


def _png_chunks(data: bytes, cap: int) -> int:
    position, count = len(_PNG_SIGNATURE), 0
    while position + 8 <= len(data) and count <= cap:
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        count += 1
        position += 12 + length
        if kind == b"IEND":
            break
    return count


def _jpeg_segments(data: bytes, cap: int) -> int:
    """Markers and skipped bytes up to the first scan (Pillow steps through both), or scans."""
    scans = data.count(_JPEG_SCAN)  # 0xFF is always followed by 0x00 inside entropy-coded data
    if scans > min(cap, MAX_JPEG_SCANS):
        return cap + 1
    position, count = 2, 0
    while position + 4 <= len(data) and count <= cap:
        if data[position] != 0xFF:
            following = data.find(b"\xff", position)
            if following < 0:
                break
            count += following - position  # junk Pillow skips one byte at a time
            position = following
            continue
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            count += 1
            position += 1
            continue
        count += 1
        if data[position : position + 2] == _JPEG_SCAN:
            break
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            position += 2
            continue
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return count


def _gif_blocks(data: bytes, cap: int) -> int:
    """Extension blocks and their sub-blocks before the first image descriptor."""
    if len(data) < 13:
        return 0
    position = 13
    flags = data[10]
    if flags & 0x80:  # global colour table
        position += 3 << ((flags & 0x07) + 1)
    count = 0
    while position < len(data) and count <= cap:
        introducer = data[position]
        if introducer != 0x21:  # an image descriptor, the trailer, or junk: Pillow takes over
            break
        position += 2
        count += 1
        while position < len(data) and count <= cap:
            size = data[position]
            position += 1 + size
            count += 1
            if size == 0:
                break
    return count


def _tiff_parts(data: bytes, cap: int) -> int:
    """Tags of the first directory, and the strips or tiles it lists."""
    order = "little" if data[:2] == b"II" else "big"
    directory = int.from_bytes(data[4:8], order)
    if directory + 2 > len(data):
        return 0
    entries = int.from_bytes(data[directory : directory + 2], order)
    count = entries
    for index in range(min(entries, cap + 1)):
        entry = directory + 2 + 12 * index
        if entry + 12 > len(data):
            break
        tag = int.from_bytes(data[entry : entry + 2], order)
        if tag in _TIFF_OFFSET_TAGS:
            count = max(count, int.from_bytes(data[entry + 4 : entry + 8], order))
    return count


def _bmp_runs(data: bytes) -> int:
    """Run-length codes (2 bytes each) of an RLE4/RLE8 BMP; 0 for other BMPs."""
    if len(data) < 34 or int.from_bytes(data[14:18], "little") < 40:
        return 0
    if int.from_bytes(data[30:34], "little") not in (1, 2):  # BI_RLE8, BI_RLE4
        return 0
    offset = int.from_bytes(data[10:14], "little")
    return max(0, len(data) - offset) // 2
