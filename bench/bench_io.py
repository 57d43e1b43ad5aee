"""Benchmark medclip_core.io.load_image against the bare library reads it wraps.

A 2048 x 2048 16-bit radiograph-like image is written once as an uncompressed DICOM (12 bits
stored, rescale and window in the file) and once as a 16-bit PNG, in a temporary folder. For
each, the median wall time over a few runs of load_image (decode + rescale + window + [0, 1]
float32) is compared with plain ``pydicom.dcmread(path).pixel_array`` and
``PIL.Image.open(path).load()``. Results go to bench/results/io.json and stdout as JSON.

Run: python bench/bench_io.py [--repeats N]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import PIL
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UID, generate_uid

from medclip_core.io import load_image
from timing import median_seconds

SIDE = 2048
RESULTS = Path(__file__).resolve().parent / "results" / "io.json"


def radiograph_like(side: int) -> np.ndarray:
    """Smooth body and lung shapes with noise, 12-bit values in uint16: compresses like a real image."""
    y, x = np.mgrid[-1:1:side * 1j, -1:1:side * 1j]
    body = np.clip(1.2 - (x / 0.8) ** 2 - (y / 0.95) ** 2, 0, 1)
    lungs = np.exp(-(((np.abs(x) - 0.35) / 0.2) ** 2 + (y / 0.45) ** 2))
    noise = np.random.default_rng(0).normal(0, 0.01, (side, side))
    return np.clip((0.1 + 0.8 * body - 0.3 * lungs + noise) * 4095, 0, 4095).astype(np.uint16)


def write_dicom(path: Path, values: np.ndarray) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.set_pixel_data(values, "MONOCHROME2", 12)
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 1000, 3000
    ds.save_as(path, enforce_file_format=True)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    values = radiograph_like(SIDE)
    with tempfile.TemporaryDirectory() as folder:
        dicom_path, png_path = Path(folder) / "image.dcm", Path(folder) / "image.png"
        write_dicom(dicom_path, values)
        Image.fromarray(values << 4).save(png_path)  # 12 significant bits in a 16-bit PNG

        def baseline_dicom() -> object:
            return pydicom.dcmread(dicom_path).pixel_array

        def baseline_png() -> object:
            with Image.open(png_path) as img:
                img.load()
                return img

        cases = {
            "dicom_16bit": (dicom_path, baseline_dicom, "pydicom.dcmread(path).pixel_array"),
            "png_16bit": (png_path, baseline_png, "PIL.Image.open(path).load()"),
        }
        results = {}
        for name, (path, baseline, baseline_name) in cases.items():
            ours = median_seconds(lambda: load_image(path), args.repeats)
            base = median_seconds(baseline, args.repeats)
            results[name] = {
                "file_bytes": path.stat().st_size,
                "load_image_s": round(ours, 4),
                "baseline": baseline_name,
                "baseline_s": round(base, 4),
                "ratio_load_image_to_baseline": round(ours / base, 2),
            }

    report = {
        "benchmark": "load_image vs bare library read",
        "image": f"{SIDE}x{SIDE} uint16, 12 bits stored, radiograph-like",
        "statistic": f"median of {args.repeats} runs after 1 warm-up",
        "results": results,
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "numpy": np.__version__,
            "pydicom": pydicom.__version__,
            "pillow": PIL.__version__,
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
