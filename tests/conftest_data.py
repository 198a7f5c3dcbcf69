"""Builders of small image fixtures in tmp_path (no binary fixtures in the repository)."""

import os
import struct
import zlib

import numpy as np
import torch
from PIL import Image

SHARED_NPZ = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                          "pneumoniamnist.npz")


def gradient(h=12, w=16, dtype=np.uint8, high=255):
    """A (h, w) horizontal ramp from 0 to ``high``, with distinct rows."""
    ramp = np.linspace(0, high, w)[None, :] * np.ones((h, 1))
    ramp[:, 0] = np.arange(h) % 2  # rows differ slightly: no two images of a set alike
    return ramp.astype(dtype)


def save(path, image, **kwargs):
    """Save a PIL image or an array; create parent folders; return the path as str."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    image.save(path, **kwargs)
    return str(path)


def noise_image(seed, size=(16, 16)):
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


class PerItem(torch.utils.data.Dataset):
    """The images of X (an array or tensor) one by one as tensors, as skorch's default
    Dataset serves them: a lazy dataset, which fit cannot scan without reading it."""

    def __init__(self, X):
        self.X = X

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return torch.as_tensor(self.X[i])


def write_bad_files(folder):
    """Zero-byte, truncated JPEG, text-as-PNG, a directory named like an image, and a
    PNG whose header declares 100000 x 100000 pixels (above Pillow's bomb limit; the
    file itself is tiny)."""
    os.makedirs(folder, exist_ok=True)
    bad = {}
    bad["empty"] = os.path.join(folder, "empty.png")
    open(bad["empty"], "wb").close()
    full = save(os.path.join(folder, "_full.jpg"), noise_image(0, (64, 64)), quality=95)
    data = open(full, "rb").read()
    os.remove(full)
    bad["truncated"] = os.path.join(folder, "truncated.jpg")
    with open(bad["truncated"], "wb") as fh:
        fh.write(data[: len(data) // 2])
    bad["text"] = os.path.join(folder, "notes.png")
    with open(bad["text"], "w") as fh:
        fh.write("this is not an image\n")
    bad["directory"] = os.path.join(folder, "x.png")
    os.makedirs(bad["directory"])
    bad["huge"] = png_claiming_size(os.path.join(folder, "huge.png"), 100_000, 100_000)
    return bad


def write_csv_with_extra_fields(path, image_names):
    """A labels CSV (header ``path,label``) over ``image_names`` whose second data row,
    CSV line 3, has a third field (an unquoted comma, say). Returns the path as str."""
    rows = [f"{name},{'ab'[k % 2]}" for k, name in enumerate(image_names)]
    rows[1] += ",stray field"
    with open(path, "w") as fh:
        fh.write("path,label\n" + "\n".join(rows) + "\n")
    return str(path)


def png_claiming_size(path, width, height):
    """A tiny valid-looking PNG whose header claims ``width`` x ``height`` pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
                 + struct.pack(">I", zlib.crc32(chunk)))
        idat = b"IDAT" + zlib.compress(b"\x00" * 16)
        fh.write(struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat)))
    return str(path)


def write_dicom(path, pixels, photometric="MONOCHROME2", window=None, slope=None,
                intercept=None, preamble=True, **tags):
    """A 16-bit grayscale DICOM file built with pydicom: ``pixels`` (H, W), or
    (frames, H, W) for a multi-frame file. ``tags`` set elements (None deletes one; bytes
    are stored as they are: malformed values pydicom itself would refuse)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3 and pixels.shape[0] > 1:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    for key, value in tags.items():
        if value is None:
            delattr(ds, key)
        elif isinstance(value, bytes):
            from pydicom.datadict import dictionary_VR, tag_for_keyword
            from pydicom.dataelem import RawDataElement
            from pydicom.tag import Tag

            tag = Tag(tag_for_keyword(key))
            ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False,
                                     True)
        else:
            setattr(ds, key, value)
    ds.save_as(str(path), enforce_file_format=preamble)
    return str(path)


def kermany_names(n_patients=12, images_per_patient=3):
    """Synthetic Kermany-style file names: (names, labels, patients)."""
    names, labels, patients = [], [], []
    for p in range(n_patients):
        kind = ("bacteria", "virus", None)[p % 3]
        for k in range(images_per_patient):
            if kind is None:
                names.append(f"IM-{p:04d}-{k + 1:04d}.jpeg")
                labels.append("normal")
                patients.append(f"IM-{p:04d}")
            else:
                names.append(f"person{p}_{kind}_{k}.jpeg")
                labels.append("bacterial" if kind == "bacteria" else "viral")
                patients.append(f"person{p}")
    return names, np.array(labels), np.array(patients)
