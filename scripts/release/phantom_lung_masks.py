"""Write ``assets/phantom/lung_masks.json``: which members of the lung-mask archive make the phantom's bank.

    PYTHONPATH=. nice python scripts/release/phantom_lung_masks.py

Deciding which of the 517 masks in torchxrayvision's archive show two whole lungs means decoding
and measuring all of them (about 6 s), which every fresh app process would otherwise do before its
first phantom image. The shipped list (names only, no mask data) carries the digest of the archive
and of the decoding libraries' versions it was made with; where either differs the renderer scans
again, so the images stay the same. ``tests/test_phantom_warm_up.py`` checks the list against a scan.
"""
from __future__ import annotations

import json

from medclip_core.data.phantom import LUNG_MASK_LIST, lung_mask_source_digest, scan_usable_lung_masks


def main() -> None:
    names = scan_usable_lung_masks()
    LUNG_MASK_LIST.parent.mkdir(parents=True, exist_ok=True)
    LUNG_MASK_LIST.write_text(json.dumps({"source": lung_mask_source_digest(), "names": list(names)}, indent=0) + "\n")
    print(f"{LUNG_MASK_LIST}: {len(names)} usable masks")


if __name__ == "__main__":
    main()
