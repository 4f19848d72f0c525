"""JPEGs whose last scan runs out of data: each fixture of fixtures/jpeg cut halfway through its
last scan's entropy-coded data and closed with EOI, and the pixels Pillow decodes them to.

libjpeg (which Pillow decodes with) completes the unit it was decoding when the data ran out
with zero bits and leaves every unit after it as earlier scans left it (zeros in a one-scan
file: grey), resuming at the next restart marker if one comes; the pipeline's decoder must do
the same, and stop there rather than walk the rest of the scan.

Writes into OUT (default fixtures/jpeg/cut): *.jpg and decoded.safetensors (Pillow's RGB,
uint8 HWC, keyed by file name). Needs only Pillow, numpy and safetensors.
"""
import argparse
import glob
import io
import os

import numpy as np
from PIL import Image
from safetensors.numpy import save_file


def last_scan_data(data):
    """Offset of the entropy-coded data of the last scan."""
    sos = data.rfind(b"\xff\xda")
    length = int.from_bytes(data[sos + 2 : sos + 4], "big")
    return sos + 2 + length


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default="fixtures/jpeg")
    ap.add_argument("--out", default="fixtures/jpeg/cut")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    decoded = {}
    for path in sorted(glob.glob(os.path.join(a.src, "*.jpg"))):
        data = open(path, "rb").read()
        start = last_scan_data(data)
        cut = start + (len(data) - start) // 2
        # Not inside a marker or a stuffed 0xFF 0x00: back up to a plain byte.
        while data[cut - 1] == 0xFF:
            cut -= 1
        damaged = data[:cut] + b"\xff\xd9"
        name = os.path.basename(path)
        with open(os.path.join(a.out, name), "wb") as f:
            f.write(damaged)
        with Image.open(io.BytesIO(damaged)) as img:
            decoded[name] = np.asarray(img.convert("RGB")).copy()
    save_file(decoded, os.path.join(a.out, "decoded.safetensors"))


if __name__ == "__main__":
    main()
