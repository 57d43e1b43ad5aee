"""Fit the out-of-distribution reference of each embedded model and ship it next to its weights.

The reference (:mod:`medclip_core.models.ood`) is the Ledoit-Wolf shrunk Gaussian of the image
embeddings of the model's phantom *training* split (one render per report); its threshold is the
99.9th percentile (``QUANTILE``) of the Mahalanobis distances of 1,000 phantom *validation* images
(393 reports, seeded renders). Written as ``assets/NAME/ood_reference.safetensors`` (mean and precision, float32,
about 260 kB); the test split is left for ``bench/bench_ood.py``.

    PYTHONPATH=. OMP_NUM_THREADS=1 nice python scripts/release/fit_ood_reference.py [--models NAME ...]
"""
from __future__ import annotations

import argparse
import json
import time

from medclip_core.data.phantom import phantom_dataset
from medclip_core.eval.phantom_eval import phantom_eval_embeddings
from medclip_core.models import get_spec, load_model
from medclip_core.models.ood import QUANTILE, fit_reference


def fit(name: str, n_val: int) -> dict:
    model = load_model(name, device="cpu")
    n_train = len(phantom_dataset("train"))
    train, _ = phantom_eval_embeddings(model, n_train, "train")
    val, _ = phantom_eval_embeddings(model, n_val, "val")
    reference = fit_reference(train.numpy(), val.numpy(), QUANTILE,
                              fitted_on=f"phantom train split ({n_train} images); threshold: {QUANTILE:.1%} quantile "
                                        f"of {n_val} phantom val images (scripts/release/fit_ood_reference.py)")
    path = reference.save(get_spec(name).local_path)
    return {"path": str(path.relative_to(get_spec(name).local_path.parents[1])),
            "threshold": round(reference.threshold, 4),
            "train_images": n_train, "val_images": n_val, "bytes": path.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["medclip-phantom", "medclip-phantom-grounding"])
    parser.add_argument("--n-val", type=int, default=1000, help="validation images for the threshold")
    args = parser.parse_args()
    start = time.perf_counter()
    result = {name: fit(name, args.n_val) for name in args.models}
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
