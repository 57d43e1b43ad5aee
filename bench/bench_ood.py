"""Out-of-distribution guard: what each embedded model flags (``medclip_core.models.ood``).

For each embedded model, with the reference it ships (``scripts/release/fit_ood_reference.py``):
- phantom *test* images (1,000: the 392 test reports, seeded renders; never seen by the fit) and the
  committed examples (phantom PNGs and DICOM): the fraction flagged, target at most 2 %;
- every image pydicom bundles (``pydicom.data.get_testdata_files()``: CT, MR, CR of the cervical
  spine, US, NM, secondary captures, SEG, RT dose; none is a chest radiograph, none a phantom): each
  should be flagged; files that fail to decode are listed as skipped with the reason;
- the pictures scikit-image bundles (``skimage.data``, offline: photos, textures, micrographs, a
  fundus, text, drawings): each should be flagged.

    PYTHONPATH=. OMP_NUM_THREADS=1 nice python bench/bench_ood.py   # -> bench/results/ood.json (~3 min idle, 2 cores)
"""
from __future__ import annotations

import json
import platform
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from medclip_core.errors import MedclipError
from medclip_core.eval.phantom_eval import phantom_eval_embeddings
from medclip_core.io import MedicalImage, image_from_array, load_image
from medclip_core.models import load_model
from medclip_core.models.base import ClipModel

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "ood.json"
MODELS = ("medclip-phantom", "medclip-phantom-grounding")
N_TEST = 1000
SKIMAGE_PICTURES = ("astronaut", "camera", "coffee", "chelsea", "cat", "rocket", "coins", "moon", "clock",
                    "hubble_deep_field", "grass", "gravel", "brick", "immunohistochemistry", "retina", "cell",
                    "microaneurysms", "page", "text", "horse", "colorwheel", "logo", "checkerboard")


def pydicom_images() -> tuple[dict[str, tuple[str, MedicalImage]], list[dict[str, str]]]:
    """Every decodable image among pydicom's test files, by file name -> (modality, image); and the skipped."""
    import pydicom
    from pydicom.data import get_testdata_files

    images, skipped = {}, []
    for path in sorted(get_testdata_files(), key=lambda p: Path(p).name):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # not DICOM at all (pydicom also ships other test data)
            continue
        if "PixelData" not in header and "Rows" not in header:
            continue  # no image in it (DICOMDIR, SR, ...)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                images[Path(path).name] = (str(header.get("Modality", "?")), load_image(path))
        except MedclipError as exc:
            skipped.append({"file": Path(path).name, "reason": str(exc).split("\n")[0][:160]})
    return images, skipped


def skimage_pictures() -> dict[str, MedicalImage]:
    import skimage.data

    pictures = {}
    for name in SKIMAGE_PICTURES:
        array = np.asarray(getattr(skimage.data, name)(), dtype=None)
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        if array.ndim == 3 and array.shape[2] == 4:
            array = array[..., :3]
        if array.dtype != np.uint8:
            array = np.round(255 * (array - array.min()) / max(float(array.max() - array.min()), 1e-9)).astype(np.uint8)
        pictures[name] = image_from_array(array)
    return pictures


def example_images() -> dict[str, MedicalImage]:
    folder = ROOT / "assets" / "examples"
    paths = sorted((folder / "phantom").glob("[0-9]*.png")) + [folder / "phantom_effusion.dcm"]
    return {path.name: load_image(path) for path in paths}


def verdicts(model: ClipModel, images: dict[str, MedicalImage], describe: Callable[[str], dict] = lambda _: {}
             ) -> dict[str, Any]:
    reference = model.ood_reference
    rows = []
    for name, image in images.items():
        with torch.inference_mode():
            verdict = reference.verdict(model.encode_image([image]))
        rows.append({"name": name, **describe(name), "score": verdict.score, "flagged": not verdict.in_distribution})
    flagged = sum(row["flagged"] for row in rows)
    return {"n": len(rows), "flagged": flagged, "fraction_flagged": round(flagged / max(len(rows), 1), 4),
            "not_flagged": [row["name"] for row in rows if not row["flagged"]],
            "min_score": round(min(row["score"] for row in rows), 3), "images": rows}


def bench_model(name: str, dicoms: dict[str, tuple[str, MedicalImage]], pictures: dict[str, MedicalImage],
                examples: dict[str, MedicalImage]) -> dict[str, Any]:
    model = load_model(name, device="cpu")
    reference = model.ood_reference
    if reference is None:
        raise SystemExit(f"{name} ships no OOD reference: run scripts/release/fit_ood_reference.py first.")
    test, _ = phantom_eval_embeddings(model, N_TEST, "test")
    distances = reference.distances(test)
    flagged = int((distances > reference.threshold).sum())
    return {
        "threshold": round(reference.threshold, 4), "fitted_on": reference.fitted_on,
        "phantom_test": {"n": len(distances), "flagged": flagged,
                         "fraction_flagged": round(flagged / len(distances), 4),
                         "target_max": 0.02, "score_median": round(float(np.median(distances)), 3),
                         "score_max": round(float(distances.max()), 3)},
        "examples": verdicts(model, examples),
        "pydicom": verdicts(model, {k: image for k, (_, image) in dicoms.items()},
                            lambda file: {"modality": dicoms[file][0]}),
        "skimage": verdicts(model, pictures),
    }


def main() -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    dicoms, skipped = pydicom_images()
    pictures, examples = skimage_pictures(), example_images()
    result = {"benchmark": "out-of-distribution guard (Mahalanobis distance to the training images' embeddings)",
              "command": "PYTHONPATH=. OMP_NUM_THREADS=1 nice python bench/bench_ood.py",
              "models": {name: bench_model(name, dicoms, pictures, examples) for name in MODELS},
              "pydicom_skipped": skipped, "seconds": round(time.perf_counter() - start, 1),
              "machine": {"python": platform.python_version(), "processor": platform.machine(),
                          "torch_threads": torch.get_num_threads()}}
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    for name, part in result["models"].items():
        print(name, {key: part[key]["fraction_flagged"] for key in ("phantom_test", "examples", "pydicom", "skimage")},
              "not flagged:", part["pydicom"]["not_flagged"] + part["skimage"]["not_flagged"])
    print(f"{len(skipped)} pydicom files skipped; {result['seconds']} s -> {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
