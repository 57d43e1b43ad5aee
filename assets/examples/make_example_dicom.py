"""Write assets/examples/phantom_effusion.dcm: phantom example 002 (pleural effusion) as a
16-bit MONOCHROME2 CR DICOM, so every tab has a DICOM one click away. Contains no patient data.

    python assets/examples/make_example_dicom.py
"""
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

HERE = Path(__file__).resolve().parent


def main() -> None:
    pixels = np.asarray(Image.open(HERE / "phantom" / "002.png").convert("L"), dtype=np.float32) / 255.0
    stored = np.round(pixels * 4000).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(HERE / "phantom_effusion.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.PatientName, ds.PatientID = "PHANTOM^SYNTHETIC", "PHANTOM-002"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelSpacing = [1.6, 1.6]
    ds.WindowCenter, ds.WindowWidth = 2000, 4000
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = stored.tobytes()
    ds.save_as(HERE / "phantom_effusion.dcm", enforce_file_format=True)


if __name__ == "__main__":
    main()
