"""Bad input to CXRClassifier.fit: exception type and a message fragment per case, and a
previously fitted model left exactly as it was when such a fit fails."""

from pathlib import Path

import numpy as np
import pytest
import torch
from skorch.callbacks import EarlyStopping, EpochScoring

from cxr_estimators import CXRClassifier

from conftest import _toy_images
from conftest_data import PerItem

X, Y = _toy_images(n=32)
XV, YV = _toy_images(n=12, seed=1)

#: (id, estimator params, fit kwargs, message fragment)
BAD_FITS = [
    ("X_val without y_val", {}, {"X_val": XV}, "X_val was given without y_val"),
    ("y_val without X_val", {}, {"y_val": YV}, "y_val was given without X_val"),
    ("X_val of another image shape", {}, {"X_val": XV[:, :, :8], "y_val": YV},
     r"X_val has images of shape \(1, 8, 16\) but X has \(1, 16, 16\)"),
    ("y_val with an unseen label", {}, {"X_val": XV, "y_val": np.r_[YV[:-1], ["covid"]]},
     r"y_val has labels \['covid'\] not in y's classes"),
    ("y_val of another length", {}, {"X_val": XV, "y_val": YV[:-1]},
     "X_val has 12 images but y_val has 11 labels"),
    ("unknown monitor", {"early_stopping": {"patience": 3, "monitor": "auc"}}, {},
     r"monitor='auc' is not one of .*did you mean 'roc_auc'"),
    ("negative min_delta", {"early_stopping": {"patience": 3, "min_delta": -0.1}}, {},
     "min_delta must be a number >= 0; got -0.1"),
    ("unknown early_stopping key", {"early_stopping": {"patience": 3, "monitr": "f1"}}, {},
     "unknown key 'monitr'.*did you mean 'monitor'"),
    ("early_stopping without patience", {"early_stopping": {"monitor": "f1"}}, {},
     "needs a 'patience'"),
    ("f1 on string labels without pos_label", {"early_stopping": {"patience": 3,
                                                                  "monitor": "f1"}}, {},
     r"monitor='f1' needs a positive class: y's classes are \['normal', 'pneumonia'\]"),
    ("pos_label not a class", {"early_stopping": {"patience": 3, "monitor": "f1",
                                                   "pos_label": "covid"}}, {},
     "pos_label='covid' is not one of y's classes"),
    ("flatten on a 1 x 1 map", {"backbone": "deep_cnn", "pooling": "flatten"}, {},
     r"pooling='flatten': backbone 'deep_cnn' reduces these images to a 1 × 1 feature map"),
    ("unknown augmentation key", {"augment": {"rotation_range": 10}}, {},
     "augment has an unknown key 'rotation_range'.*did you mean 'rotation'"),
    ("bad augmentation value", {"augment": {"fill": "wrap"}}, {},
     "augment fill='wrap' is not one of"),
    ("balanced sampling of a single class", {"sampling": "balanced"}, {"y": ["a"] * len(Y)},
     r"y has a single class \['a'\].*sampling='balanced'"),
    ("neurons tuple with a zero", {"neurons": (8, 0)}, {}, "neurons must be an int >= 1"),
    ("unknown optimizer argument", {"optimizer_kwargs": {"betas2": 0.9}}, {},
     "optimizer_kwargs has 'betas2', not an argument of Adam.*did you mean 'betas'"),
    ("unknown small-CNN argument", {"backbone_kwargs": {"depth": 4}}, {},
     "backbone_kwargs has an unknown key 'depth' for 'simple_cnn'"),
    # label smoothing, LR schedules, weight averaging (issue #14)
    ("label_smoothing 1", {"label_smoothing": 1.0}, {}, r"'label_smoothing'.*Got 1.0"),
    ("negative label_smoothing", {"label_smoothing": -0.1}, {},
     r"'label_smoothing'.*\[0.0, 1.0\).*Got -0.1"),
    ("unknown schedule", {"lr_schedule": "cosin"}, {},
     r"lr_schedule='cosin' is not a known schedule.*did you mean 'cosine'"),
    ("unknown schedule policy", {"lr_schedule": {"policy": "one_cycle"}}, {},
     r"'one_cycle' is not a known schedule.*did you mean 'onecycle'"),
    ("unknown schedule argument", {"lr_schedule": {"policy": "cosine", "warmup": 1}}, {},
     r"'cosine' has no argument 'warmup'.*did you mean 'warmup_epochs'"),
    ("schedule argument set by the package", {"lr_schedule": {"policy": "onecycle",
                                                              "max_lr": 1}}, {},
     r"'onecycle' has no argument 'max_lr'"),
    ("unknown plateau argument", {"lr_schedule": {"pateince": 2}}, {},
     r"'plateau' has no argument 'pateince'.*did you mean 'patience'"),
    ("warm-up as long as training", {"lr_schedule": {"policy": "cosine",
                                                     "warmup_epochs": 3}, "max_epochs": 3},
     {}, r"warmup_epochs=3 must be >= 0 and below max_epochs=3"),
    ("ema with one epoch", {"average_weights": "ema"}, {},
     r"average_weights='ema' averages weights across epochs and needs max_epochs >= 2; "
     r"got max_epochs=1"),
    ("swa with one epoch", {"average_weights": "swa"}, {},
     r"average_weights='swa' .*got max_epochs=1"),
    ("unknown averaging", {"average_weights": "mean"}, {},
     r"'average_weights' parameter .* Got 'mean'"),
    ("unknown averaging method", {"average_weights": {"method": "polyak"}}, {},
     r"method 'polyak' is not one of \['ema', 'swa'\]"),
    ("ema decay 1", {"average_weights": {"method": "ema", "decay": 1.0}, "max_epochs": 3},
     {}, r"decay=1.0 must be a number in \(0, 1\)"),
    ("ema with an swa option", {"average_weights": {"method": "ema", "start": 2}}, {},
     r"'ema' has no option \['start'\]"),
    ("swa start after training", {"average_weights": {"method": "swa", "start": 4},
                                  "max_epochs": 3}, {},
     r"start=4 is an epoch number \(an int\) and must be in \[1, 3\]"),
    # values that passed the checks and failed inside torch, or silently did harm
    ("optimizer value torch refuses", {"optimizer_kwargs": {"betas": 0.9}}, {},
     r"optimizer_kwargs=\{'betas': 0.9\} is not valid for Adam \(optimizer='adam'\)"),
    ("optimizer value as text", {"optimizer_kwargs": {"eps": "1e-8"}}, {},
     r"optimizer_kwargs=\{'eps': '1e-8'\} is not valid for Adam"),
    ("optimizer_kwargs with a non-string key", {"optimizer_kwargs": {1: 2}}, {},
     "optimizer_kwargs has 1, not an argument of Adam"),
    ("backbone_kwargs with a non-string key", {"backbone_kwargs": {1: 2}}, {},
     "backbone_kwargs has an unknown key 1 for 'simple_cnn'"),
    ("negative eta_min (a negative learning rate)",
     {"lr_schedule": {"policy": "cosine", "eta_min": -0.01}, "max_epochs": 2}, {},
     r"lr_schedule eta_min=-0.01 must be a number >= 0"),
    ("plateau factor torch refuses", {"lr_schedule": {"factor": 2.0}}, {},
     r"lr_schedule=\{'factor': 2.0\} is not valid for torch's 'plateau' scheduler: "
     r"Factor should be < 1.0"),
    ("plateau patience as text", {"lr_schedule": {"patience": "2"}}, {},
     r"lr_schedule=\{'patience': '2'\} is not valid for torch's 'plateau' scheduler"),
    ("warm-up as text", {"lr_schedule": {"policy": "cosine", "warmup_epochs": "1"},
                         "max_epochs": 2}, {}, r"warmup_epochs='1' must be >= 0"),
    ("ema decay as text", {"average_weights": {"method": "ema", "decay": "0.9"},
                           "max_epochs": 2}, {}, r"decay='0.9' must be a number in \(0, 1\)"),
    ("swa start 0 as an int", {"average_weights": {"method": "swa", "start": 0},
                               "max_epochs": 3}, {},
     r"start=0 is an epoch number \(an int\) and must be in \[1, 3\].*give a float"),
    ("infinite rotation (was blamed on the lr)", {"augment": {"rotation": float("inf")}}, {},
     "augment rotation must be a finite number >= 0; got inf"),
    ("flip as text (bool('no') is True)", {"augment": {"horizontal_flip": "no"}}, {},
     "augment horizontal_flip must be True or False; got 'no'"),
    ("checkpoint_dir is a file", {"checkpoint_dir": __file__}, {},
     r"checkpoint_dir='.*test_errors.py' exists and is not a folder"),
    ("images without pixels", {}, {"X": np.zeros((32, 1, 0, 16), np.float32)},
     r"X has images of 0x16 pixels"),
    ("images too small for the backbone", {"backbone": "inception_v3"}, {},
     r"backbone='inception_v3' cannot run on images of shape \(1, 16, 16\): .*Use larger "
     r"images"),
    ("weights is a folder", {"weights": str(Path(__file__).parent)}, {},
     r"weights='.*tests' is a folder, not a weights file"),
    ("cache an empty path", {"freeze": True, "cache": ""}, {},
     r"cache='' is not a folder path"),
    ("cache is a file", {"freeze": True, "cache": __file__}, {},
     r"cache='.*test_errors.py' exists and is not a folder"),
    ("empty X_val", {}, {"X_val": XV[:0], "y_val": YV[:0]}, r"X_val is empty \(0 images\)"),
    ("empty-string label", {}, {"y": np.r_[Y[:-1], [""]]},
     r"y has empty labels \('' or only whitespace.*at rows \[31\]"),
    # sample weights, warm start, extra callbacks, devices (issue #13)
    ("sample_weight of another length", {}, {"sample_weight": np.ones(3)},
     r"sample_weight has shape \(3,\) but y has 32 labels; expected shape \(32,\)"),
    ("2-D sample_weight", {}, {"sample_weight": np.ones((32, 2))},
     r"sample_weight has shape \(32, 2\)"),
    ("negative sample_weight", {}, {"sample_weight": np.r_[np.ones(5), -0.5, np.ones(26)]},
     r"sample_weight\[5\] = .*-0.5.* is negative"),
    ("NaN sample_weight", {}, {"sample_weight": np.r_[np.ones(7), np.nan, np.ones(24)]},
     r"sample_weight\[7\] = .*nan.* is not finite"),
    ("infinite sample_weight", {}, {"sample_weight": np.r_[np.ones(2), np.inf, np.ones(29)]},
     r"sample_weight\[2\] = .*inf.* is not finite"),
    ("all-zero sample_weight", {}, {"sample_weight": np.zeros(32)},
     "sample_weight is zero for all 32 images"),
    ("text sample_weight", {}, {"sample_weight": ["a"] * 32}, "sample_weight must be numbers"),
    ("warm start with other classes", {"warm_start": True},
     {"y": np.where(Y == "normal", "a", "b")},
     r"warm_start=True: y has classes \['a', 'b'\] but the fitted model has "
     r"\['normal', 'pneumonia'\]"),
    ("warm start with another image shape", {"warm_start": True}, {"X": X[:, :, :8, :8]},
     r"warm_start=True: X has images of shape \(1, 8, 8\) but the fitted model was "
     r"trained on \(1, 16, 16\)"),
    ("warm start with another head", {"warm_start": True, "neurons": 4}, {},
     r"warm_start=True: the fitted model's weights do not fit .*neurons=4"),
    ("callback named like one of ours", {"callbacks": [("early_stopping", EarlyStopping())]},
     {}, r"callbacks\[0\] is named 'early_stopping', which CXRClassifier already uses"),
    ("callback named like a skorch default", {"callbacks": [("a", EarlyStopping()),
                                                            ("train_loss", EarlyStopping())]},
     {}, r"callbacks\[1\] is named 'train_loss'"),
    ("callback scoring into our history", {"callbacks": [EpochScoring("f1",
                                                                      name="valid_acc")]},
     {}, r"callbacks\[0\] records its score as 'valid_acc'"),
    ("not a callback", {"callbacks": ["tensorboard"]}, {},
     r"callbacks\[0\] = 'tensorboard' is not a skorch callback"),
    ("callback name not a string", {"callbacks": [(1, EarlyStopping())]}, {},
     r"callbacks\[0\] = \(1, .* is not a skorch callback"),
    ("misspelt device", {"device": "cdua"}, {},
     r"device='cdua' is not one of .*did you mean 'cuda'\?"),
    ("device index not a number", {"device": "cuda:x"}, {}, r"device='cuda:x' is not one of"),
] + ([("a GPU that is not there", {"device": "cuda:7"}, {}, r"device='cuda:7' but")]
     if torch.cuda.device_count() < 8 else [])
# bad tta (read at predict time too): tests/test_tta.py


@pytest.mark.parametrize("params, fit_kwargs, match",
                         [case[1:] for case in BAD_FITS], ids=[case[0] for case in BAD_FITS])
def test_bad_fit_input_raises_and_keeps_fitted_model(params, fit_kwargs, match,
                                                     small_clf_params):
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 1}).fit(X, Y)
    before = {"proba": clf.predict_proba(X), "net": clf.net_, "classes": clf.classes_,
              "best_epoch": clf.best_epoch_,
              "state": {k: v.clone() for k, v in clf.module_.state_dict().items()}}
    clf.set_params(**params)
    fit_kwargs = dict(fit_kwargs)
    X_fit, y = fit_kwargs.pop("X", X), fit_kwargs.pop("y", Y)
    with pytest.raises(ValueError, match=match):
        clf.fit(X_fit, y, **fit_kwargs)
    assert clf.net_ is before["net"] and clf.classes_ is before["classes"]
    assert clf.best_epoch_ == before["best_epoch"]
    for k, v in clf.module_.state_dict().items():
        assert torch.equal(v, before["state"][k]), k
    np.testing.assert_array_equal(clf.predict_proba(X), before["proba"])


# ============================================================================ issue #11
# The bad-input suite: files, arrays, labels, parameters, faults and model files. Each
# case names what should happen (tests/bad_inputs.py); `python -m benchmarks.robustness`
# runs the same cases and counts the outcomes.
import errno
import io as _io
import json
import os
import pickle
import shutil
import stat
import warnings
from unittest import mock

import cxr_estimators
from PIL import Image
from sklearn.exceptions import DataConversionWarning, NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from bad_inputs import (Case, Handled, Raises, Warns, Workspace, dicom, find_node,
                        png_claiming, png_with_sbit, run_case, tiff_claiming)
from cxr_estimators import ImageLoader, _validation
from cxr_estimators import io as cio
from cxr_estimators.datasets import load_image_folder
from cxr_estimators.explain import grad_cam
from cxr_estimators.io import (ImageNotFoundError, ImagePermissionError, ImageReadError,
                               check_image_file, read_image)
from cxr_estimators.persistence import ModelFileError, VersionMismatchWarning
from cxr_estimators._callbacks import TrainingDivergedError

IRE = ImageReadError
GRAY = np.arange(256, dtype=np.uint8).reshape(16, 16)


def _symlink_loop(ws):
    a, b = ws.path("loop_a.png"), ws.path("loop_b.png")
    for p in (a, b):
        if os.path.lexists(p):
            os.remove(p)
    os.symlink(b, a)
    os.symlink(a, b)
    return a


def _dangling(ws):
    p = ws.path("dangling.png")
    if os.path.lexists(p):
        os.remove(p)
    os.symlink(ws.path("nowhere.png"), p)
    return p


def _fifo(ws):
    p = ws.path("pipe.png")
    if os.path.lexists(p):
        os.remove(p)
    os.mkfifo(p)
    return p


def _frames(ws, fmt, n=3):
    frames = [Image.fromarray(np.full((8, 8), 60 * k, np.uint8)) for k in range(n)]
    buf = _io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:])
    return ws.write(f"frames.{fmt.lower()}", buf.getvalue())


def _truncated(ws, fmt, suffix):
    buf = _io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8)).save(
        buf, format=fmt)
    return ws.write(f"truncated.{suffix}", buf.getvalue()[: len(buf.getvalue()) // 2])


def _replaced_same_stat(ws, by_rename):
    """A file replaced by another of the same size, its mtime set back (``cp -p``)."""
    path = ws.image("replaced.png", np.zeros((16, 16), np.uint8))
    read_image(path)
    st = os.stat(path)
    new = ws.image("replacement.png", np.full((16, 16), 255, np.uint8))
    data = Path(new).read_bytes()
    Path(new).write_bytes(data + b"\0" * (st.st_size - len(data))) \
        if len(data) < st.st_size else None
    if by_rename:
        os.replace(new, path)
    else:
        Path(path).write_bytes(Path(new).read_bytes())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return read_image(path)


def _sixteen_bit(ws, name, high):
    return ws.image(name, (np.arange(256).reshape(16, 16) * high // 255).astype(np.uint16))


def _open_failing(err):
    def fail(name):
        raise OSError(err, os.strerror(err), name)
    return fail


def _with_open(ws, failing, reader=read_image):
    path = ws.image("io_error.png", GRAY)
    cio.clear_cache()
    with mock.patch.object(cio, "_open_file", failing):
        return reader(path)


def _folder_with(ws, make_bad):
    root = Path(ws.path("folder"))
    if root.exists():
        shutil.rmtree(root)
    for label in ("normal", "pneumonia"):
        for k in range(3):
            ws.image(f"folder/{label}/{k}.png", GRAY)
    make_bad(str(root / "normal"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_image_folder(str(root), on_error="skip")


def _skipped(name):
    return lambda bunch, ws: any(name in str(p) for p, _ in bunch.skipped)


FILES = [
    Case("empty file", "files", lambda ws: read_image(ws.write("empty.png", b"")),
         Raises(IRE, r"empty\.png.*zero bytes")),
    Case("text named .png", "files", lambda ws: read_image(ws.write("notes.png", "hello\n")),
         Raises(IRE, r"notes\.png.*not a recognised image")),
    Case("PostScript named .png (would run Ghostscript)", "files",
         lambda ws: read_image(ws.write("x.png", "%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 "
                                                 "8 8\nshowpage\n")),
         Raises(IRE, r"x\.png.*PostScript")),
    Case("EPS binary header named .jpg", "files",
         lambda ws: read_image(ws.write("eps.jpg", b"\xc5\xd0\xd3\xc6" + b"\0" * 40)),
         Raises(IRE, r"eps\.jpg.*EPS")),
    Case("SVG named .png", "files",
         lambda ws: read_image(ws.write("logo.png", "<svg xmlns='http://www.w3.org/2000/svg'/>")),
         Raises(IRE, r"logo\.png.*SVG")),
    Case("GIF (not an allowed format)", "files",
         lambda ws: read_image(ws.image("anim.gif", GRAY)), Raises(IRE, r"anim\.gif.*GIF")),
    Case("WebP (not an allowed format)", "files",
         lambda ws: read_image(ws.image("x.webp", GRAY)), Raises(IRE, r"x\.webp.*RIFF")),
    Case("PDF named .jpg", "files",
         lambda ws: read_image(ws.write("scan.jpg", b"%PDF-1.4\n")),
         Raises(IRE, r"scan\.jpg.*PDF")),
    Case("pickle named .png", "files",
         lambda ws: read_image(ws.pickle_payload("p.png", ws.marker("img"))),
         Raises(IRE, r"p\.png.*pickle", after=lambda ws: not (ws.root / "markers/img").exists())),
    Case("zip named .png", "files",
         lambda ws: read_image(ws.write("z.png", b"PK\x03\x04" + b"\0" * 30)),
         Raises(IRE, r"z\.png.*zip")),
    Case("random bytes", "files",
         lambda ws: read_image(ws.write("noise.png", bytes(range(256)) * 4)),
         Raises(IRE, r"noise\.png.*not a recognised image")),
    Case("truncated JPEG", "files", lambda ws: read_image(_truncated(ws, "JPEG", "jpg")),
         Raises(IRE, r"truncated\.jpg.*truncated or corrupt")),
    Case("truncated PNG", "files", lambda ws: read_image(_truncated(ws, "PNG", "png")),
         Raises(IRE, r"truncated\.png.*truncated or corrupt")),
    Case("truncated BMP", "files", lambda ws: read_image(_truncated(ws, "BMP", "bmp")),
         Raises(IRE, r"truncated\.bmp.*truncated or corrupt")),
    Case("truncated TIFF", "files", lambda ws: read_image(_truncated(ws, "TIFF", "tif")),
         Raises(IRE, r"truncated\.tif.*truncated or corrupt")),
    Case("PNG magic only", "files",
         lambda ws: read_image(ws.write("magic.png", b"\x89PNG\r\n\x1a\n")),
         Raises(IRE, r"magic\.png.*(truncated or corrupt|not a recognised)")),
    Case("directory named x.png", "files",
         lambda ws: read_image(os.makedirs(ws.path("dir.png"), exist_ok=True)
                               or ws.path("dir.png")),
         Raises(IRE, r"dir\.png.*is a directory")),
    Case("missing file", "files", lambda ws: read_image(ws.path("nope.png")),
         Raises(ImageNotFoundError, r"nope\.png.*does not exist")),
    Case("missing file is a FileNotFoundError", "files",
         lambda ws: read_image(ws.path("nope2.png")), Raises(FileNotFoundError, r"nope2\.png")),
    Case("symlink loop", "files", lambda ws: read_image(_symlink_loop(ws)),
         Raises(IRE, r"loop_a\.png.*(symbolic links|errno 40)")),
    Case("dangling symlink", "files", lambda ws: read_image(_dangling(ws)),
         Raises(ImageNotFoundError, r"dangling\.png.*does not exist")),
    Case("file name over 255 bytes", "files", lambda ws: read_image(ws.path("a" * 300 + ".png")),
         Raises(IRE, r"aaaa.*(too long|errno 36)")),
    Case("path with a NUL byte", "files", lambda ws: read_image(ws.path("bad\0name.png")),
         Raises(IRE, r"bad.*not a valid path")),
    Case("a named pipe (would block)", "files", lambda ws: read_image(_fifo(ws)),
         Raises(IRE, r"pipe\.png.*not a regular file")),
    Case("/dev/zero (never ends)", "files", lambda ws: read_image("/dev/zero"),
         Raises(IRE, r"/dev/zero.*not a regular file")),
    Case("an int as path", "files", lambda ws: read_image(3),
         Raises(TypeError, r"image path must be a str.*int 3")),
    Case("None as path", "files", lambda ws: read_image(None),
         Raises(TypeError, r"image path must be a str.*NoneType")),
    Case("bytes path is read", "files",
         lambda ws: read_image(os.fsencode(ws.image("bytes.png", GRAY))),
         Handled(lambda img, ws: img.shape == (16, 16) and img.max() == 1.0)),
    Case("missing bytes path", "files", lambda ws: read_image(os.fsencode(ws.path("gone.png"))),
         Raises(ImageNotFoundError, r"gone\.png.*does not exist")),
    Case("permission denied", "files",
         lambda ws: _with_open(ws, _open_failing(errno.EACCES)),
         Raises(ImagePermissionError, r"io_error\.png.*permission denied")),
    Case("I/O error (EIO) while reading", "files",
         lambda ws: _with_open(ws, _open_failing(errno.EIO)),
         Raises(IRE, r"io_error\.png.*errno 5")),
    Case("stale NFS handle (ESTALE)", "files",
         lambda ws: _with_open(ws, _open_failing(errno.ESTALE)),
         Raises(IRE, r"io_error\.png.*errno 116")),
    Case("EIO in the header check", "files",
         lambda ws: _with_open(ws, _open_failing(errno.EIO), check_image_file),
         Raises(IRE, r"io_error\.png.*errno 5")),
    Case("PNG claiming 100000 x 100000 pixels", "files",
         lambda ws: read_image(png_claiming(ws.path("bomb.png"), 100_000, 100_000)),
         Raises(IRE, r"bomb\.png.*100000x100000")),
    Case("PNG claiming 10000 x 10000 (3.8 GB decoded)", "files",
         lambda ws: read_image(png_claiming(ws.path("big.png"), 10_000, 10_000)),
         Raises(IRE, r"big\.png.*10000x10000.*max_pixels=40000000")),
    Case("PNG claiming 7000 x 7000", "files",
         lambda ws: read_image(png_claiming(ws.path("big7.png"), 7_000, 7_000)),
         Raises(IRE, r"big7\.png.*7000x7000.*max_pixels")),
    Case("header check of a 10000 x 10000 PNG", "files",
         lambda ws: check_image_file(png_claiming(ws.path("big_h.png"), 10_000, 10_000)),
         Raises(IRE, r"big_h\.png.*max_pixels")),
    Case("header check of PostScript named .png", "files",
         lambda ws: check_image_file(ws.write("hc.png", "%!PS-Adobe-3.0\n")),
         Raises(IRE, r"hc\.png.*PostScript")),
    Case("header check of a symlink loop", "files",
         lambda ws: check_image_file(_symlink_loop(ws)),
         Raises(IRE, r"loop_a\.png.*(symbolic links|errno 40)")),
    Case("multi-page TIFF", "files", lambda ws: read_image(_frames(ws, "TIFF")),
         Raises(IRE, r"frames\.tiff.*3 frames.*frame=")),
    Case("animated PNG", "files", lambda ws: read_image(_frames(ws, "PNG")),
         Raises(IRE, r"frames\.png.*3 frames")),
    Case("multi-page TIFF, frame=2 chosen", "files",
         lambda ws: read_image(_frames(ws, "TIFF"), frame=2),
         Handled(lambda img, ws: np.allclose(img, 120 / 255))),
    Case("frame out of range", "files", lambda ws: read_image(_frames(ws, "TIFF"), frame=5),
         Raises(IRE, r"frames\.tiff.*frame=5 is not an int in \[0, 2\]")),
    Case("frame=True", "files", lambda ws: read_image(_frames(ws, "TIFF"), frame=True),
         Raises(IRE, r"frame=True")),
    Case("float TIFF with NaN", "files",
         lambda ws: read_image(ws.image("nan.tif", Image.fromarray(
             np.array([[0.5, np.nan]], np.float32), mode="F"))),
         Raises(IRE, r"nan\.tif.*NaN or inf")),
    Case("TIFF claiming huge size", "files",
         lambda ws: read_image(tiff_claiming(ws.path("huge.tif"), 10_000, 10_000)),
         Raises(IRE, r"huge\.tif.*10000x10000.*max_pixels")),
    Case("16-bit PNG holding 12-bit data", "files",
         lambda ws: read_image(_sixteen_bit(ws, "twelve.png", 4095)),
         Warns(UserWarning, r"twelve\.png.*16-bit.*below 4096.*bits=12")),
    Case("16-bit PNG with sBIT = 12 is scaled by 4095", "files",
         lambda ws: read_image(png_with_sbit(ws.path("sbit.png"),
                                             np.full((4, 4), 4095), 12)),
         Handled(lambda img, ws: np.allclose(img, 1.0))),
    Case("bits=12 for data above 4095", "files",
         lambda ws: read_image(_sixteen_bit(ws, "full16.png", 65535), bits=12),
         Raises(IRE, r"full16\.png.*more than 12 significant bits")),
    Case("bits=0", "files", lambda ws: read_image(_sixteen_bit(ws, "b0.png", 4095), bits=0),
         Raises(IRE, r"b0\.png.*bits=0")),
    Case("replaced file, same size and mtime (cp -p)", "files",
         lambda ws: _replaced_same_stat(ws, by_rename=False),
         Handled(lambda img, ws: img.min() == 1.0)),
    Case("replaced by rename, same size and mtime", "files",
         lambda ws: _replaced_same_stat(ws, by_rename=True),
         Handled(lambda img, ws: img.min() == 1.0)),
    Case("folder with a symlink loop, on_error='skip'", "files",
         lambda ws: _folder_with(ws, lambda d: os.symlink(d + "/l1.png", d + "/l1.png")),
         Handled(_skipped("l1.png"))),
    Case("folder with PostScript named .png, on_error='skip'", "files",
         lambda ws: _folder_with(ws, lambda d: Path(d, "ps.png").write_text("%!PS\n")),
         Handled(_skipped("ps.png"))),
    Case("folder with a truncated PNG, on_error='skip'", "files",
         lambda ws: _folder_with(ws, lambda d: Path(d, "t.png").write_bytes(
             Path(_truncated(ws, "PNG", "png")).read_bytes())),
         Handled(lambda bunch, ws: len(bunch.filenames) == 7)),  # header intact: kept
    Case("ImageLoader on a list with a missing file", "files",
         lambda ws: ImageLoader(size=8).fit_transform([ws.image("ok.png", GRAY),
                                                       ws.path("missing.png")]),
         Raises(ImageNotFoundError, r"image 1 of X.*missing\.png")),
    Case("lazy ImageLoader, corrupt file read in a batch", "files",
         lambda ws: ImageLoader(size=8, lazy=True).fit_transform(
             [ws.image("ok.png", GRAY), _truncated(ws, "PNG", "png")])[1],
         Raises(IRE, r"image 1 of X.*truncated\.png")),
]


def _dicom_case(ws, name, frame=None, **tags):
    return read_image(dicom(ws.path(name), np.arange(16, dtype=np.uint16).reshape(4, 4)
                            if "frames" not in tags else tags.pop("frames"), **tags),
                      frame=frame)


DICOM = [
    Case("DICOM with malformed WindowCenter", "files",
         lambda ws: _dicom_case(ws, "wc.dcm", WindowCenter=b"abc ", WindowWidth=b"100 "),
         Raises(IRE, r"wc\.dcm.*(WindowCenter|could not be parsed)")),
    Case("DICOM with malformed RescaleSlope", "files",
         lambda ws: _dicom_case(ws, "rs.dcm", RescaleSlope=b"x1"),
         Raises(IRE, r"rs\.dcm.*(RescaleSlope|could not be parsed)")),
    Case("multi-frame DICOM", "files",
         lambda ws: _dicom_case(ws, "mf.dcm", frames=np.zeros((3, 4, 4), np.uint16)),
         Raises(IRE, r"mf\.dcm.*3 frames")),
    Case("multi-frame DICOM, frame=1 chosen", "files",
         lambda ws: _dicom_case(ws, "mf1.dcm", frame=1,
                                frames=np.stack([np.zeros((4, 4)), np.eye(4) * 9,
                                                 np.zeros((4, 4))]).astype(np.uint16)),
         Handled(lambda img, ws: img.shape == (4, 4) and img[0, 0] == 1.0)),
    Case("DICOM pixel data truncated", "files",
         lambda ws: read_image(ws.write("tr.dcm", Path(dicom(
             ws.path("tr_full.dcm"), np.zeros((64, 64), np.uint16))).read_bytes()[:-4000])),
         Raises(IRE, r"tr\.dcm.*(pixel data|could not be parsed)")),
    Case("garbage named .dcm", "files", lambda ws: read_image(ws.write("g.dcm", "not dicom")),
         Raises(IRE, r"g\.dcm.*could not be parsed")),
    Case("DICOM declaring 20000 x 20000", "files",
         lambda ws: check_image_file(dicom(ws.path("hugedcm.dcm"),
                                           np.zeros((2, 2), np.uint16), Rows=20000,
                                           Columns=20000)),
         Raises(IRE, r"hugedcm\.dcm.*20000x20000.*max_pixels")),
]

FILES += DICOM


def _fit(ws, X=None, y=None, **params):
    return CXRClassifier(**{**ws.params, **params}).fit(ws.X if X is None else X,
                                                        ws.y if y is None else y)


def _less_memory(gib):
    return mock.patch.object(_validation, "available_memory", lambda: gib << 30)


def _cam_small_layer(ws, layer=None):
    clf, X3 = ws.fitted_rgb()
    return grad_cam(clf, X3[:2], layer=layer)


LOADER = ImageLoader(size=8)
U8 = np.zeros((2, 16, 16), np.uint8)

ARRAYS = [
    Case("one (H, W, C) image to ImageLoader", "arrays",
         lambda ws: LOADER.fit_transform(np.zeros((28, 28, 3), np.uint8)),
         Raises(ValueError, r"shape \(28, 28, 3\): a single \(H, W, C\) image.*X\[None\]")),
    Case("one (H, W) image to ImageLoader", "arrays",
         lambda ws: LOADER.fit_transform(np.zeros((28, 28), np.uint8)),
         Raises(ValueError, r"shape \(28, 28\): a single \(H, W\) image")),
    Case("uint16 array holding 8-bit data", "arrays",
         lambda ws: LOADER.fit_transform(np.full((2, 16, 16), 200, np.uint16)),
         Warns(UserWarning, r"X is uint16 but all its values are <= 255 \(max 200\)")),
    Case("ragged list, uint16 image holding 8-bit data", "arrays",
         lambda ws: ImageLoader(size=8).fit_transform([np.zeros((8, 8), np.uint8),
                                                       np.full((9, 9), 9, np.uint16)]),
         Warns(UserWarning, r"image 1 of X is uint16")),
    Case("float image outside [0, 1]", "arrays",
         lambda ws: LOADER.fit_transform(np.full((2, 8, 8), 255.0, np.float32)),
         Raises(ValueError, r"image 0 is float with values in \[255, 255\]")),
    Case("float image with NaN", "arrays",
         lambda ws: LOADER.fit_transform(np.full((2, 8, 8), np.nan, np.float32)),
         Raises(ValueError, r"image 0 contains NaN or inf")),
    Case("bool images", "arrays", lambda ws: LOADER.fit_transform(np.zeros((2, 8, 8), bool)),
         Raises(ValueError, r"image 0 has unsupported dtype bool")),
    Case("complex images", "arrays",
         lambda ws: LOADER.fit_transform(np.zeros((2, 8, 8), np.complex64)),
         Raises(ValueError, r"image 0 has unsupported dtype complex64")),
    Case("empty list", "arrays", lambda ws: LOADER.fit_transform([]),
         Raises(ValueError, r"X is empty")),
    Case("5-D array", "arrays", lambda ws: LOADER.fit_transform(np.zeros((2, 1, 8, 8, 3))),
         Raises(ValueError, r"got shape \(2, 1, 8, 8, 3\)")),
    Case("paths mixed with numbers", "arrays",
         lambda ws: LOADER.fit_transform([ws.image("m.png", GRAY), 3]),
         Raises(ValueError, r"mixes file paths and other values: item 1 is int 3")),
    Case("different sizes with size=None", "arrays",
         lambda ws: ImageLoader(size=None).fit_transform([np.zeros((4, 4), np.uint8),
                                                          np.zeros((5, 5), np.uint8)]),
         Raises(ValueError, r"image 1 has size \(5, 5\) but image 0 has \(4, 4\)")),
    Case("five channels", "arrays",
         lambda ws: LOADER.fit_transform(np.zeros((2, 8, 8, 5), np.uint8)),
         Raises(ValueError, r"image 0 has shape \(8, 8, 5\)")),
    Case("a single path string", "arrays", lambda ws: LOADER.fit_transform("a.png"),
         Raises(ValueError, r"not a single path")),
    Case("ImageLoader(size=100000) (120 GB per image)", "arrays",
         lambda ws: ImageLoader(size=100_000).fit_transform(U8),
         Raises(ValueError, r"size=100000 makes images of 100000x100000x3 float32")),
    Case("ImageLoader size=(20000, 20000)", "arrays",
         lambda ws: ImageLoader(size=(20000, 20000), channels=1).fit_transform(U8),
         Raises(ValueError, r"size=\(20000, 20000\).*1.0 GiB limit")),
    Case("transform of more images than memory holds", "arrays",
         lambda ws: _transform_low_memory(),
         Raises(MemoryError, r"ImageLoader.transform of 64 images.*lazy=True")),
    Case("flattened (n, 784) X to CXRClassifier", "arrays",
         lambda ws: _fit(ws, X=np.zeros((4, 784), np.float32), y=ws.y[:4]),
         Raises(ValueError, r"flattened 28x28 images.*X.reshape\(4, 1, 28, 28\)")),
    Case("flattened RGB (n, 3072) X", "arrays",
         lambda ws: _fit(ws, X=np.zeros((4, 3072), np.float32), y=ws.y[:4]),
         Raises(ValueError, r"flattened 32x32 RGB images")),
    Case("X with NaN", "arrays",
         lambda ws: _fit(ws, X=np.where(ws.X > 0.9, np.nan, ws.X)),
         Raises(ValueError, r"Input X contains NaN")),
    Case("X with inf", "arrays", lambda ws: _fit(ws, X=np.where(ws.X > 0.9, np.inf, ws.X)),
         Raises(ValueError, r"Input X contains infinity")),
    Case("5-D X", "arrays", lambda ws: _fit(ws, X=ws.X[:, :, None]),
         Raises(ValueError, r"X must have shape \(n, C, H, W\).*\(16, 1, 1, 16, 16\)")),
    Case("X with 4 channels", "arrays", lambda ws: _fit(ws, X=np.repeat(ws.X, 4, axis=1)),
         Raises(ValueError, r"X has 4 channels")),
    Case("X and y of different lengths", "arrays", lambda ws: _fit(ws, y=ws.y[:-1]),
         Raises(ValueError, r"X has 16 images but y has 15 labels")),
    Case("empty X", "arrays", lambda ws: _fit(ws, X=ws.X[:0], y=ws.y[:0]),
         Raises(ValueError, r"n_samples=0")),
    Case("paths given to CXRClassifier", "arrays", lambda ws: _fit(ws, X=["a.png"] * 16),
         Raises(ValueError, r"X holds file paths.*put an ImageLoader before")),
    Case("raw uint8 pixels given to CXRClassifier", "arrays",
         lambda ws: _fit(ws, X=(ws.X * 255).astype(np.uint8)),
         Warns(UserWarning, r"X is uint8 with values up to 2\d\d: the network gets raw")),
    Case("X_val with NaN", "arrays",
         lambda ws: _fit_val(ws, np.full_like(ws.X[:4], np.nan), ws.y[:4]),
         Raises(ValueError, r"Input X_val contains NaN")),
    Case("lazy dataset of (H, W, C) items", "arrays",
         lambda ws: _fit(ws, X=PerItem(torch.zeros(16, 16, 16, 5))),
         Raises(ValueError, r"X's items must be \(C, H, W\) with C = 1 or 3; got \(16, 16, 5\)")),
    Case("a TensorDataset (tuples) as X", "arrays",
         lambda ws: _fit(ws, X=torch.utils.data.TensorDataset(torch.zeros(16, 1, 8, 8))),
         Raises(ValueError, r"X's items must be \(C, H, W\) arrays or tensors; got tuple")),
    Case("predict on one (C, H, W) image", "arrays",
         lambda ws: ws.fitted_rgb()[0].predict(ws.fitted_rgb()[1][0]),
         Raises(ValueError, r"shape \(3, 16, 16\): a single image of the fitted shape.*X\[None\]")),
    Case("predict on images of another size", "arrays",
         lambda ws: ws.fitted().predict(ws.X[:, :, :8, :8]),
         Raises(ValueError, r"images of shape \(1, 8, 8\) vs \(1, 16, 16\) seen in fit")),
    Case("predict before fit", "arrays", lambda ws: CXRClassifier().predict(ws.X),
         Raises(NotFittedError, r"CXRClassifier instance is not fitted")),
    Case("fit on two 4096 x 4096 images (9 GB)", "arrays",
         lambda ws: _fit_big(ws), Raises(MemoryError, r"training on batches of 2 images of "
                                                      r"shape \(1, 4096, 4096\).*needs about")),
    Case("float64 X larger than memory", "arrays", lambda ws: _convert_low_memory(ws),
         Raises(MemoryError, r"converting X .*float64.* to float32")),
    Case("Grad-CAM on a layer without a feature map", "arrays",
         lambda ws: _cam_small_layer(ws, "head.0"),
         Raises(ValueError, r"layer='head.0' outputs \(2, 8\), not a 4-D feature map")),
    Case("Grad-CAM default layer too small", "arrays", lambda ws: _cam_tiny(ws),
         Warns(UserWarning, r"layer 'trunk.layer4' outputs a 1x1 map.*using 'trunk.layer3'")),
    Case("Grad-CAM default layer of resnet18 at 64 px is a coarse 2x2 map", "arrays",
         lambda ws: _cam_tiny(ws, size=64),
         Warns(UserWarning, r"layer 'trunk.layer4' outputs a 2x2 map.*cannot tell the "
               r"border band from the chest.*layer='trunk.layer3' \(4x4\)")),
    Case("Grad-CAM explicit 1x1 layer of resnet18 at 32 px", "arrays",
         lambda ws: _cam_tiny(ws, "trunk.layer4"),
         Raises(ValueError, r"layer='trunk.layer4' outputs a 1x1 map.*layer='trunk.layer3'")),
    Case("Grad-CAM unknown layer", "arrays", lambda ws: _cam_small_layer(ws, "trunk.layr4"),
         Raises(ValueError, r"layer='trunk.layr4' is not a module")),
    Case("Grad-CAM batch_size=0", "arrays",
         lambda ws: grad_cam(ws.fitted(), ws.X, batch_size=0),
         Raises(ValueError, r"batch_size must be an int >= 1; got 0")),
    Case("Grad-CAM target not a class", "arrays",
         lambda ws: grad_cam(ws.fitted(), ws.X[:2], target="covid"),
         Raises(ValueError, r"target 'covid' is not in classes_")),
    Case("Grad-CAM of a non-CXR estimator", "arrays",
         lambda ws: grad_cam(FunctionTransformer(), ws.X),
         Raises(TypeError, r"grad_cam needs a CXRClassifier.*FunctionTransformer")),
]


def _transform_low_memory():
    with _less_memory(0):  # 0 GiB: any batch is too large
        return ImageLoader(size=64).fit_transform(np.zeros((64, 8, 8), np.uint8))


def _convert_low_memory(ws):
    with _less_memory(0):
        return _fit(ws, X=ws.X.astype(np.float64))


def _fit_big(ws):
    X = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (2, 1, 4096, 4096),
                                        (0, 0, 0, 0))  # no memory behind it
    with _less_memory(4):  # a 4 GiB machine; the check must refuse before allocating
        return _fit(ws, X=X, y=ws.y[:2], backbone="resnet18")


def _fit_val(ws, Xv, yv):
    return CXRClassifier(**ws.params).fit(ws.X, ws.y, X_val=Xv, y_val=yv)


def _cam_tiny(ws, layer=None, size=32):
    X = np.random.default_rng(0).random((4, 1, size, size), dtype=np.float32)
    clf = ws.once(f"resnet{size}", lambda: CXRClassifier(**{**ws.params,
                                                            "backbone": "resnet18"})
                  .fit(X, ws.y[:4]))
    return grad_cam(clf, X[:1], layer=layer)


def _named_fifo(ws, name):
    path = ws.path(name)
    if not os.path.exists(path):
        os.mkfifo(path)
    return path


def _grouped_split_losing_a_class(ws):
    y = np.array(["normal"] * 12 + ["pneumonia"] * 4)
    groups = np.r_[np.arange(12), [99] * 4]  # every pneumonia image from one patient
    for seed in range(20):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            CXRClassifier(**{**ws.params, "validation_fraction": 0.25, "random_state": seed}
                          ).fit(ws.X, y, groups=groups)
        if any("puts every image" in str(w.message) for w in caught):
            warnings.warn(next(str(w.message) for w in caught
                               if "puts every image" in str(w.message)), UserWarning)
            return seed
    return None


LABELS = [
    Case("'normal' and 'normal '", "labels",
         lambda ws: _fit(ws, y=np.r_[ws.y[:-1], ["normal "]]),
         Raises(ValueError, r"differ only by case or surrounding whitespace: \[\['normal', "
                            r"'normal '\]\]")),
    Case("'Normal' and 'normal'", "labels",
         lambda ws: _fit(ws, y=np.r_[ws.y[:-1], ["Normal"]]),
         Raises(ValueError, r"differ only by case.*'Normal', 'normal'")),
    Case("a single class", "labels", lambda ws: _fit(ws, y=["normal"] * 16),
         Raises(ValueError, r"y has a single class \['normal'\]")),
    Case("one labelled image", "labels", lambda ws: _fit(ws, X=ws.X[:1], y=ws.y[:1]),
         Raises(ValueError, r"n_samples=1: need at least 2")),
    Case("y is None", "labels", lambda ws: _fit_none_y(ws),
         Raises(ValueError, r"requires y to be passed")),
    Case("y as a column vector", "labels", lambda ws: _fit(ws, y=ws.y[:, None]),
         Warns(DataConversionWarning, r"column-vector y was passed")),
    Case("continuous y", "labels", lambda ws: _fit(ws, y=np.linspace(0, 1, 16)),
         Raises(ValueError, r"Unknown label type: continuous")),
    Case("y with NaN", "labels", lambda ws: _fit(ws, y=np.r_[[np.nan], np.ones(15)]),
         Raises(ValueError, r"Input y contains NaN")),
    Case("y with None", "labels",
         lambda ws: _fit(ws, y=np.array(list(ws.y[:-1]) + [None], dtype=object)),
         Raises(ValueError, r"y has missing labels \(None or NaN\) at rows \[15\]")),
    Case("y mixing strings and ints", "labels",
         lambda ws: _fit(ws, y=np.array(list(ws.y[:-1]) + [1], dtype=object)),
         Raises(ValueError, r"y mixes label types \['int', 'str'\] \(e.g. row 15: 1\)")),
    Case("class_weight for an unknown label", "labels",
         lambda ws: _fit(ws, class_weight={"covid": 2.0}),
         Raises(ValueError, r"class_weight has labels \['covid'\] not in y's classes")),
    Case("class_weight NaN", "labels", lambda ws: _fit(ws, class_weight={"normal": np.nan}),
         Raises(ValueError, r"class 'normal' the weight nan")),
    Case("class_weight inf", "labels", lambda ws: _fit(ws, class_weight={"normal": np.inf}),
         Raises(ValueError, r"class 'normal' the weight inf")),
    Case("class_weight negative", "labels",
         lambda ws: _fit(ws, class_weight={"pneumonia": -2}),
         Raises(ValueError, r"class 'pneumonia' the weight -2.0")),
    Case("class_weight all zero", "labels",
         lambda ws: _fit(ws, class_weight={"normal": 0, "pneumonia": 0}),
         Raises(ValueError, r"every class the weight 0")),
    Case("class_weight not a number", "labels",
         lambda ws: _fit(ws, class_weight={"normal": "high"}),
         Raises(ValueError, r"class_weight values must be numbers.*'high'")),
    Case("grouped split takes a whole class out of training", "labels",
         _grouped_split_losing_a_class,
         Warns(UserWarning, r"puts every image of class index\(es\) \[1\]")),
    Case("groups of another length", "labels",
         lambda ws: CXRClassifier(**ws.params).fit(ws.X, ws.y, groups=np.arange(3)),
         Raises(ValueError, r"groups has 3 entries but y has 16 labels")),
    Case("Grad-CAM targets of another length", "labels",
         lambda ws: grad_cam(ws.fitted(), ws.X[:2], target=["normal"] * 3),
         Raises(ValueError, r"target has shape \(3,\); expected one label or 2")),
]


def _fit_none_y(ws):
    return CXRClassifier(**ws.params).fit(ws.X, None)


def _p(name, value, fragment, exc=ValueError):
    """A parameter case: fitting with ``name=value`` raises ``exc`` matching ``fragment``."""
    return Case(f"{name}={value!r}", "parameters", lambda ws: _fit(ws, **{name: value}),
                Raises(exc, fragment))


def _lp(name, value, fragment):
    return Case(f"ImageLoader {name}={value!r}", "parameters",
                lambda ws: ImageLoader(**{name: value}).fit_transform(U8),
                Raises(ValueError, fragment))


def _nan_weights_file(ws):
    from cxr_estimators.backbones import build_trunk

    trunk = build_trunk("simple_cnn", in_channels=1)[0]
    state = {k: torch.full_like(v, float("nan")) for k, v in trunk.state_dict().items()}
    path = ws.path("nan_weights.pt")
    torch.save(state, path)
    return path


def _pickle_weights(ws):
    return ws.pickle_payload("evil_weights.pt", ws.marker("weights"))


PARAMS = [
    _p("early_stopping", True, r"'early_stopping' parameter.*not the boolean True"),
    _p("max_epochs", True, r"'max_epochs' parameter.*not the boolean True"),
    _p("batch_size", False, r"'batch_size' parameter.*Got False"),
    _p("neurons", True, r"'neurons' parameter.*not the boolean True"),
    _p("num_workers", True, r"'num_workers' parameter.*not the boolean"),
    _p("neurons", 10**9, r"'neurons' parameter of CXRClassifier is 1000000000; values above "
                         r"65536"),
    _p("neurons", 0, r"'neurons' parameter of CXRClassifier must be an int in the range"),
    _p("lr", 0, r"'lr' parameter of CXRClassifier must be a float in the range \(0"),
    _p("lr", -1.0, r"'lr' parameter"),
    _p("lr", "fast", r"'lr' parameter.*Got 'fast'"),
    _p("dropout", 1.0, r"'dropout' parameter.*\[0.0, 1.0\)"),
    _p("weight_decay", -0.1, r"'weight_decay' parameter"),
    _p("optimizer", "adamw", r"'optimizer' parameter.*'adam'"),
    _p("backbone", "resnet1", r"backbone='resnet1' is not a known backbone; did you mean "
                              r"'resnet18'"),
    _p("backbone", "timm:resnet_18", r"'timm:resnet_18' is not a timm model; did you mean "
                                     r"'resnet18'"),
    _p("backbone", "xrv:densenet121-all", r"'xrv:densenet121-all' is not a torchxrayvision "
                                          r"model; did you mean 'densenet121-res224-all'"),
    _p("weight_decay_scope", ["head.9.weight"], r"weight_decay_scope pattern 'head.9.weight' "
                                                r"matches no parameter"),
    _p("backbone", 18, r"'backbone' parameter"),
    _p("weights", "IMAGENET", r"weights='IMAGENET' is not a known weights name for "
                              r"'simple_cnn'|has no pretrained weights"),
    _p("weights", "/no/such/weights.pt", r"weights file '/no/such/weights.pt' does not exist",
       FileNotFoundError),
    Case("weights file with NaN tensors", "parameters",
         lambda ws: _fit(ws, weights=_nan_weights_file(ws)),
         Raises(ValueError, r"nan_weights\.pt' has tensors with NaN or inf")),
    Case("weights file that is a pickle payload", "parameters",
         lambda ws: _fit(ws, weights=_pickle_weights(ws)),
         Raises(ValueError, r"evil_weights\.pt' could not be loaded as a torch checkpoint",
                after=lambda ws: not (ws.root / "markers/weights").exists())),
    Case("weights file of another architecture", "parameters",
         lambda ws: _fit(ws, weights=_other_arch_weights(ws)),
         Raises(ValueError, r"other_arch\.pt' does not fit backbone 'simple_cnn': the first "
                            r"mismatched tensor 'features\.0\.0\.weight' is not in the file")),
    _p("freeze", 99, r"freeze=99 asks to train the last 99 blocks"),
    _p("freeze", -1, r"'freeze' parameter"),
    _p("validation_fraction", 1.0, r"'validation_fraction' parameter"),
    _p("device", "tpu", r"device='tpu' is not one of 'auto'"),
    _p("augment", {"rotaton": 10}, r"augment has an unknown key 'rotaton'.*did you mean "
                                   r"'rotation'"),
    _p("augment", "yes", r"'augment' parameter"),
    _p("lr_schedule", {"patiense": 2}, r"lr_schedule 'plateau' has no argument 'patiense'.*"
                                       r"did you mean 'patience'"),
    _p("lr_schedule", "cosin", r"lr_schedule='cosin' is not a known schedule.*did you mean "
                               r"'cosine'"),
    _p("early_stopping", 0, r"'early_stopping' parameter"),
    _p("random_state", "seed", r"'random_state' parameter"),
    _p("class_weight", "auto", r"'class_weight' parameter"),
    _p("cache", 3, r"'cache' parameter"),
    _p("checkpoint_dir", 3, r"'checkpoint_dir' parameter"),
    _lp("size", True, r"'size' parameter of ImageLoader must be an int, not the boolean"),
    _lp("size", 0, r"'size' parameter"),
    _lp("size", (224, 0), r"size must be an int or \(height, width\) of ints >= 1"),
    _lp("size", (224.5, 224), r"size must be an int or \(height, width\) of ints"),
    _lp("size", (1, 2, 3), r"size must be an int or \(height, width\)"),
    _lp("channels", True, r"'channels' parameter of ImageLoader must be an int, not the bool"),
    _lp("channels", 2, r"channels must be 1 or 3; got 2"),
    _lp("normalize", (float("nan"), 1.0), r"normalize must be finite; got mean \[nan"),
    _lp("normalize", (0.5, float("inf")), r"normalize must be finite"),
    _lp("normalize", (0.5, 0.0), r"normalize std must be > 0"),
    _lp("normalize", "zscore", r"'normalize' parameter"),
    _lp("normalize", (1, 2, 3), r"normalize must be a preset name or \(mean, std\)"),
    _lp("center_crop", 0, r"'center_crop' parameter"),
    _lp("center_crop", 1.5, r"'center_crop' parameter"),
    _lp("lazy", "yes", r"'lazy' parameter"),
]


def _other_arch_weights(ws):
    path = ws.path("other_arch.pt")
    torch.save({"foo.weight": torch.zeros(3, 3)}, path)
    return path


if not torch.cuda.is_available():
    PARAMS.append(_p("device", "cuda", r"device='cuda' but no CUDA GPU is available"))


def _diverge(ws, **params):
    clf = ws.keep(ws.fitted())
    return clf.set_params(**params).fit(ws.X, ws.y)


def _nan_lazy(ws):
    X = torch.from_numpy(ws.X.copy())
    X[3, 0, 0, 0] = float("nan")
    clf = ws.keep(ws.fitted())
    return clf.fit(PerItem(X), ws.y)


def _failing_step(exc):
    from cxr_estimators import _training

    original = _training._Net.train_step
    calls = []

    def step(self, batch, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise exc
        return original(self, batch, **kw)
    return mock.patch.object(_training._Net, "train_step", step)


def _fail_in_training(ws, exc, **params):
    clf = ws.keep(ws.fitted())
    with _failing_step(exc):
        return clf.set_params(**{"max_epochs": 5, **params}).fit(ws.X, ws.y)


def _interrupted_ok(ws):
    clf = ws.state["clf"]
    return (clf.history_[-1, "interrupted"] is True and clf.predict(ws.X).shape == (16,)
            and clf.net_ is not ws.state["net"])


def _interrupt_search(ws):
    search = GridSearchCV(CXRClassifier(**{**ws.params, "max_epochs": 3}),
                          {"lr": [1e-3, 1e-2]}, cv=2)
    ws.state["search"] = search
    with _failing_step(KeyboardInterrupt()):
        return search.fit(ws.X, ws.y)


def _early_stop(ws):
    return CXRClassifier(**{**ws.params, "max_epochs": 30, "early_stopping": 1,
                            "validation_fraction": 0.25, "lr": 0.3}).fit(ws.X, ws.y)


def _save_failing(ws, exc):
    path = ws.model_file("precious.safetensors")
    ws.state["path"], ws.state["bytes"] = path, Path(path).read_bytes()
    clf = ws.fitted(neurons=4)

    def fail(fd, *a):
        raise exc
    with mock.patch("os.fsync", fail):
        return cxr_estimators.save(clf, path)


def _old_file_intact(ws):
    path = Path(ws.state["path"])
    leftovers = [p for p in path.parent.iterdir() if p.name.startswith(".precious")]
    return (path.read_bytes() == ws.state["bytes"] and not leftovers
            and cxr_estimators.load(path).predict(ws.X).shape == (16,))


def _save_unsaveable_over(ws):
    path = ws.model_file("precious.safetensors")
    ws.state["path"], ws.state["bytes"] = path, Path(path).read_bytes()
    bad = Pipeline([("f", FunctionTransformer(np.log)), ("clf", CXRClassifier())])
    return cxr_estimators.save(bad, path)


def _cache_dir_with(ws, spoil):
    """Fit with a disk feature cache, spoil its file, fit again."""
    cache = Path(ws.path("feature_cache"))
    shutil.rmtree(cache, ignore_errors=True)
    params = {**ws.params, "freeze": True, "cache": str(cache)}
    first = CXRClassifier(**params).fit(ws.X, ws.y).predict_proba(ws.X)
    (path,) = cache.glob("features-*.safetensors")
    spoil(ws, path)
    ws.state["first"] = first
    again = CXRClassifier(**params).fit(ws.X, ws.y).predict_proba(ws.X)
    ws.state["again"] = again
    return again


def _flip_byte(path, at):
    data = bytearray(Path(path).read_bytes())
    data[at] ^= 0x40
    Path(path).write_bytes(bytes(data))


def _cache_same(ws):
    return np.allclose(ws.state["first"], ws.state["again"], atol=1e-6)


FAULTS = [
    Case("SGD with lr=1e6 diverges", "faults",
         lambda ws: _diverge(ws, optimizer="sgd", lr=1e6, max_epochs=3),
         Raises(TrainingDivergedError, r"training diverged: the (training|validation) loss "
                                       r"(is (nan|inf) at epoch \d+, batch \d+|exploded to "
                                       r"\S+ at epoch \d+, .*); likely cause: the learning "
                                       r"rate: lr=1e\+06", after=lambda ws: ws.kept())),
    Case("Adam with lr=1e9 diverges", "faults",
         lambda ws: _diverge(ws, lr=1e9, max_epochs=5),
         Raises(TrainingDivergedError, r"training diverged.*lr=1e\+09",
                after=lambda ws: ws.kept())),
    Case("NaN in a lazily read image", "faults", _nan_lazy,
         Raises(TrainingDivergedError, r"likely cause: the input: images of this batch "
                                       r"contain NaN", after=lambda ws: ws.kept())),
    Case("a batch of only zero-weight classes", "faults",
         lambda ws: _diverge(ws, class_weight={"normal": 0.0}, batch_size=1),
         Raises(TrainingDivergedError, r"likely cause: the class weights: every image of this "
                                       r"batch is of a class with weight 0",
                after=lambda ws: ws.kept())),
    Case("refit with NaN X and new labels keeps the fitted model", "faults",
         lambda ws: ws.keep(ws.fitted()).fit(np.full_like(ws.X, np.nan),
                                             ["cat", "dog"] * 8),
         Raises(ValueError, r"Input X contains NaN",
                after=lambda ws: ws.kept() and ws.state["clf"].classes_.tolist()
                == ["normal", "pneumonia"])),
    Case("an exception inside training", "faults",
         lambda ws: _fail_in_training(ws, RuntimeError("CUDA error: device-side assert")),
         Raises(RuntimeError, r"device-side assert", after=lambda ws: ws.kept())),
    Case("an exception inside training, cached features", "faults",
         lambda ws: _fail_in_training(ws, RuntimeError("boom"), freeze=True, cache=True),
         Raises(RuntimeError, r"boom", after=lambda ws: ws.kept())),
    Case("Ctrl-C during fit", "faults",
         lambda ws: _fail_in_training(ws, KeyboardInterrupt()),
         Raises(KeyboardInterrupt, r"fit interrupted during epoch \d+ of 5.*weights of epoch",
                after=_interrupted_ok)),
    Case("Ctrl-C during fit with early stopping", "faults",
         lambda ws: _fail_in_training(ws, KeyboardInterrupt(), early_stopping=2,
                                      validation_fraction=0.25),
         Raises(KeyboardInterrupt, r"fit interrupted.*best so far", after=_interrupted_ok)),
    Case("Ctrl-C during a grid search stops it", "faults", _interrupt_search,
         Raises(KeyboardInterrupt, r"fit interrupted",
                after=lambda ws: not hasattr(ws.state["search"], "cv_results_"))),
    Case("early stopping is not an interrupt", "faults", _early_stop,
         Handled(lambda clf, ws: "interrupted" not in clf.history_[-1]
                 and len(clf.history_) < 30)),
    Case("disk full while saving over a model", "faults",
         lambda ws: _save_failing(ws, OSError(errno.ENOSPC, "No space left on device")),
         Raises(OSError, r"precious\.safetensors.*No space left.*previous file.*unchanged",
                after=_old_file_intact)),
    Case("Ctrl-C while saving over a model", "faults",
         lambda ws: _save_failing(ws, KeyboardInterrupt()),
         Raises(KeyboardInterrupt, r"", after=_old_file_intact)),
    Case("saving an unsaveable pipeline over a model", "faults", _save_unsaveable_over,
         Raises(TypeError, r"Pipeline.steps\[0\]\[1\].func", after=_old_file_intact)),
    Case("feature cache file replaced by a pickle payload", "faults",
         lambda ws: _cache_dir_with(ws, lambda ws, p: p.write_bytes(
             Path(ws.pickle_payload("cache.pkl", ws.marker("cache"))).read_bytes())),
         Warns(UserWarning, r"feature cache file .*features-.*not valid.*pickle",
               after=lambda ws: not (ws.root / "markers/cache").exists() and _cache_same(ws))),
    Case("feature cache file with a flipped bit", "faults",
         lambda ws: _cache_dir_with(ws, lambda ws, p: _flip_byte(p, -10)),
         Warns(UserWarning, r"feature cache file .*not valid.*digest",
               after=_cache_same)),
    Case("feature cache file truncated", "faults",
         lambda ws: _cache_dir_with(ws, lambda ws, p: p.write_bytes(p.read_bytes()[:50])),
         Warns(UserWarning, r"feature cache file .*not valid.*truncated", after=_cache_same)),
]


def _load(ws, data=None, name="m.safetensors"):
    path = ws.write(name, data) if data is not None else ws.model_file(name)
    return cxr_estimators.load(path)


def _tampered(ws, edit):
    return cxr_estimators.load(ws.retamper(ws.model_file("t.safetensors"), edit))


def _set_class(path):
    def edit(tree, meta, tensors):
        tree["__estimator__"] = path
    return edit


def _flip_in_file(ws, where):
    path = ws.model_file("flip.safetensors")
    data = Path(path).read_bytes()
    n = int.from_bytes(data[:8], "little")
    _flip_byte(path, 8 + n + 100 if where == "tensors" else 8 + n // 2)
    return cxr_estimators.load(path)


def _joblib_payload(ws):
    import joblib

    path = ws.path("model.joblib")
    joblib.dump(Pipeline([("clf", FunctionTransformer())]), path)
    Path(path).write_bytes(pickle.dumps(_payload(ws.marker("model"))))
    return cxr_estimators.load(path)


def _payload(marker):
    from bad_inputs import Payload
    return Payload(marker)


def _cuda_model_on_cpu(ws):
    clf = ws.fitted()
    clf.device_ = "cuda"
    path = ws.path("cuda.safetensors")
    cxr_estimators.save(clf, path)
    return cxr_estimators.load(path)


class _MyEstimator(CXRClassifier):
    pass


def _versions_edit(tree, meta, tensors):
    versions = json.loads(meta["versions"])
    versions["torch"] = "0.0.1"
    meta["versions"] = json.dumps(versions)


def _edit_node(suffix, fn):
    def edit(tree, meta, tensors):
        fn(find_node(tree, suffix))
    return edit


MODEL_FILES = [
    Case("a joblib pickle with a code payload", "model files", _joblib_payload,
         Raises(ModelFileError, r"model\.joblib.*Python pickle.*runs whatever code",
                after=lambda ws: not (ws.root / "markers/model").exists())),
    Case("a torch.save file", "model files",
         lambda ws: _load(ws, Path(_torch_save(ws)).read_bytes(), "t.pt"),
         Raises(ModelFileError, r"t\.pt.*zip archive")),
    Case("an empty file", "model files", lambda ws: _load(ws, b""),
         Raises(ModelFileError, r"m\.safetensors.*empty")),
    Case("a truncated model file", "model files",
         lambda ws: _load(ws, Path(ws.model_file("full.safetensors")).read_bytes()[:5000]),
         Raises(ModelFileError, r"m\.safetensors.*(truncated|corrupt)")),
    Case("a model file cut to 4 bytes", "model files", lambda ws: _load(ws, b"\x10\0\0\0"),
         Raises(ModelFileError, r"m\.safetensors.*truncated")),
    Case("bit rot in the weights", "model files", lambda ws: _flip_in_file(ws, "tensors"),
         Raises(ModelFileError, r"flip\.safetensors.*corrupt or was modified: its checksum")),
    Case("bit rot in the header", "model files", lambda ws: _flip_in_file(ws, "header"),
         Raises(ModelFileError, r"flip\.safetensors.*(corrupt|checksum)")),
    Case("missing model file", "model files",
         lambda ws: cxr_estimators.load(ws.path("none.safetensors")),
         Raises(FileNotFoundError, r"model file .*none\.safetensors.*does not exist")),
    Case("a directory", "model files", lambda ws: cxr_estimators.load(ws.root),
         Raises(ModelFileError, r"is a directory")),
    Case("a .npy file", "model files",
         lambda ws: _load(ws, b"\x93NUMPY\x01\x00" + b"\0" * 100, "a.npy"),
         Raises(ModelFileError, r"a\.npy.*NumPy")),
    Case("random bytes as a model file", "model files", lambda ws: _load(ws, bytes(range(256)) * 8),
         Raises(ModelFileError, r"m\.safetensors.*(truncated|not a safetensors)")),
    Case("a plain safetensors state dict", "model files", lambda ws: _load(
        ws, __import__("safetensors.torch").torch.save({"w": torch.zeros(2)})),
         Raises(ModelFileError, r"format None.*not written by cxr_estimators.save")),
    Case("a file of a future format", "model files",
         lambda ws: _tampered(ws, lambda t, meta, s: meta.update(format="cxr_estimators.model.v9")),
         Raises(ModelFileError, r"format 'cxr_estimators.model.v9'.*another version")),
    Case("a tampered class 'os:system' (checksum recomputed)", "model files",
         lambda ws: _tampered(ws, _set_class("os:system")),
         Raises(ModelFileError, r"class 'os:system' is not a scikit-learn or cxr_estimators "
                                r"estimator; refused")),
    Case("a tampered class 'builtins:eval'", "model files",
         lambda ws: _tampered(ws, _set_class("builtins:eval")),
         Raises(ModelFileError, r"'builtins:eval'.*refused")),
    Case("a tampered class that is not an estimator", "model files",
         lambda ws: _tampered(ws, _set_class("sklearn.utils:Bunch")),
         Raises(ModelFileError, r"'sklearn.utils:Bunch' is not an estimator class")),
    Case("a tampered class that does not exist", "model files",
         lambda ws: _tampered(ws, _set_class("sklearn.nothing:Foo")),
         Raises(ModelFileError, r"'sklearn.nothing:Foo' does not exist")),
    Case("a tampered unknown entry", "model files",
         lambda ws: _tampered(ws, lambda t, m, s: t["params"].update(lr={"__pickle__": "x"})),
         Raises(ModelFileError, r"unknown entry '__pickle__'")),
    Case("a tampered tensor reference", "model files",
         lambda ws: _tampered(ws, lambda t, m, s: s.pop(sorted(s)[0])),
         Raises(ModelFileError, r"tensor 't0' named in the header is missing")),
    Case("a tampered unknown parameter", "model files",
         lambda ws: _tampered(ws, lambda t, m, s: t["params"].update(evil=1)),
         Raises(ModelFileError, r"CXRClassifier does not take the saved parameters.*evil")),
    Case("tampered neurons (weights do not fit)", "model files",
         lambda ws: _tampered(ws, lambda t, m, s: t["params"].update(neurons=3)),
         Raises(ModelFileError, r"saved weights do not fit the network")),
    Case("a malformed tree", "model files",
         lambda ws: _tampered(ws, lambda t, m, s: t.pop("params")),
         Raises(ModelFileError, r"malformed estimator tree")),
    Case("written with another torch version", "model files",
         lambda ws: _tampered(ws, _versions_edit),
         Warns(VersionMismatchWarning, r"written with torch 0.0.1 \(installed: ")),
    Case("save a pipeline with a callable parameter", "model files",
         lambda ws: cxr_estimators.save(Pipeline([("f", FunctionTransformer(np.log))]),
                                        ws.path("f.safetensors")),
         Raises(TypeError, r"cannot save Pipeline.steps\[0\]\[1\].func: a numpy.*ufunc")),
    Case("save a fitted GridSearchCV", "model files",
         lambda ws: cxr_estimators.save(GridSearchCV(CXRClassifier(**ws.params), {"lr": [
             1e-3, 1e-2]}, cv=2).fit(ws.X, ws.y), ws.path("g.safetensors")),
         Raises(TypeError, r"a fitted GridSearchCV; save its best_estimator_")),
    Case("save something that is not an estimator", "model files",
         lambda ws: cxr_estimators.save({"a": 1}, ws.path("d.safetensors")),
         Raises(TypeError, r"save expects a scikit-learn estimator; got dict")),
    Case("save into a missing directory", "model files",
         lambda ws: cxr_estimators.save(CXRClassifier(), ws.path("no/dir/m.safetensors")),
         Raises(FileNotFoundError, r"directory .*no/dir' does not exist")),
    Case("save after set_params changed the network", "model files",
         lambda ws: cxr_estimators.save(ws.fitted().set_params(neurons=4),
                                        ws.path("changed.safetensors")),
         Raises(ValueError, r"neurons: 8 \(fitted\) vs 4 \(now\).*no file was written",
                after=lambda ws: not Path(ws.path("changed.safetensors")).exists())),
    Case("save over someone's text file", "model files",
         lambda ws: cxr_estimators.save(ws.fitted(), ws.write("notes.txt", "my notes")),
         Raises(FileExistsError, r"notes\.txt.*not a cxr_estimators model file",
                after=lambda ws: Path(ws.path("notes.txt")).read_text() == "my notes")),
    Case("save onto a FIFO", "model files", lambda ws: cxr_estimators.save(
        ws.fitted(), _named_fifo(ws, "pipe")),
         Raises(ValueError, r"pipe.*(FIFO|named pipe)",
                after=lambda ws: stat.S_ISFIFO(os.lstat(ws.path("pipe")).st_mode))),
    Case("load a FIFO (would block)", "model files",
         lambda ws: cxr_estimators.load(_named_fifo(ws, "pipe_in")),
         Raises(ValueError, r"pipe_in.*(FIFO|named pipe)")),
    Case("load with an unknown device", "model files",
         lambda ws: cxr_estimators.load(ws.model_file(), device="gpu"),
         Raises(ValueError, r"device='gpu' is not one of")),
    Case("save an estimator class from outside the packages", "model files",
         lambda ws: cxr_estimators.save(_MyEstimator(), ws.path("c.safetensors")),
         Raises(TypeError, r"test_errors:_MyEstimator is not a scikit-learn or cxr_estimators")),
    Case("save a numpy Generator parameter", "model files",
         lambda ws: cxr_estimators.save(CXRClassifier(random_state=np.random.default_rng()),
                                        ws.path("r.safetensors")),
         Raises(TypeError, r"CXRClassifier.random_state: a numpy.random.*Generator")),
    Case("a model saved and loaded predicts the same", "model files", lambda ws: _load(ws),
         Handled(lambda clf, ws: np.array_equal(clf.predict_proba(ws.X),
                                                ws.fitted().predict_proba(ws.X)))),
]


def _torch_save(ws):
    path = ws.path("t_src.pt")
    torch.save({"w": torch.zeros(2)}, path)
    return path


if not torch.cuda.is_available():
    MODEL_FILES.append(Case(
        "a CUDA-trained model on a machine without CUDA", "model files", _cuda_model_on_cpu,
        Warns(UserWarning, r"trained on 'cuda'; no CUDA GPU here, so it is loaded on the CPU",
              after=lambda ws: True)))

from bad_inputs_second_pass import CASES as SECOND_PASS  # noqa: E402 (issue #27)

CASES = FILES + ARRAYS + LABELS + PARAMS + FAULTS + MODEL_FILES + SECOND_PASS
#: Every case, with the fit-validation cases above as Case objects (for the benchmark).
def _bad_fit(ws, params, fit_kwargs):
    """One BAD_FITS case on a fitted model, as test_bad_fit_input_raises_and_keeps_... runs it."""
    fit_kwargs = dict(fit_kwargs)
    X_fit, y = fit_kwargs.pop("X", X), fit_kwargs.pop("y", Y)
    return ws.keep(ws.fitted()).set_params(**params).fit(X_fit, y, **fit_kwargs)


ALL_CASES = CASES + [
    Case(f"fit: {name}", "parameters",
         lambda ws, p=params, k=kwargs: _bad_fit(ws, p, k),
         Raises(ValueError, match, after=lambda ws: ws.kept()))
    for name, params, kwargs, match in BAD_FITS]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return Workspace(tmp_path_factory.mktemp("bad_inputs"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, workspace):
    if case in DICOM:
        pytest.importorskip("pydicom")
    outcome, detail = run_case(case, workspace)
    assert outcome == case.expected_outcome, f"{outcome}: {detail}"


def test_the_suite_is_large_and_covers_every_category():
    assert len(ALL_CASES) >= 150
    assert {c.category for c in CASES} == {"files", "arrays", "labels", "parameters",
                                           "faults", "model files"}
    assert len({c.id for c in CASES}) == len(CASES)


class _CtrlCAt(__import__("skorch").callbacks.Callback):
    """Sends the main thread a real interrupt (as Ctrl-C does) at the end of an epoch."""

    def __init__(self, epoch=2):
        self.epoch = epoch

    def on_epoch_end(self, net, **kwargs):
        if len(net.history) == self.epoch:
            import _thread

            _thread.interrupt_main()  # delivered asynchronously, like SIGINT


def test_real_interrupt_propagates_after_leaving_a_usable_model(small_clf_params):
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 50, "early_stopping": None},
                        callbacks=[("ctrl_c", _CtrlCAt(2))])
    with pytest.raises(KeyboardInterrupt, match="fit interrupted during epoch"):
        clf.fit(X, Y)
    assert clf.history_[-1, "interrupted"] is True and len(clf.history_) < 50
    assert clf.predict(X).shape == (len(X),) and clf.best_epoch_ >= 1
