"""Test-time augmentation of :class:`~cxr_estimators.CXRClassifier` (``tta``).

``predict_proba`` averages the class probabilities of each image and of ``views``
augmented copies of it, drawn by :mod:`cxr_estimators.augment`'s augmenter. The draws come
from torch's RNG, seeded from ``random_state`` inside a
:meth:`~cxr_estimators._rng.FitRandomness.global_stream` (torch's global RNG set to that
seed under the lock that fits in other threads share, then restored): the same images in
the same batches give the same probabilities on every call, and the global RNG is left
as it was. (An image's draws depend on its place in its batch, so a
subset of X may get slightly different probabilities than the same images inside X.)

Written here by hand: the wrapper module that averages the views' probabilities, swapped
in for the fitted module while the prediction loop runs. Grad-CAM
(:mod:`cxr_estimators.explain`) reads the fitted module itself and is unaffected.
"""

from __future__ import annotations

import contextlib
import functools
import numbers

import torch
from torch import nn

from ._rng import FitRandomness
from .augment import DEFAULT_AUGMENTATION, make_augmenter

__all__ = ["check_tta", "tta_context"]

#: Views drawn when ``tta`` is a dict without ``"views"``.
DEFAULT_VIEWS = 8


def check_tta(tta, augment):
    """Validate ``tta``; return ``(augmenter, views)``, or None when it is off.

    ``tta=k`` (int): ``k`` views drawn with the fit's ``augment`` settings (the mild
    defaults of :data:`~cxr_estimators.augment.DEFAULT_AUGMENTATION` when training did
    not augment). A dict: augmentation settings as for ``augment``, plus ``"views"``
    (default 8).
    """
    if tta is None or tta is False:
        return None
    if isinstance(tta, dict):
        settings = dict(tta)
        views = settings.pop("views", DEFAULT_VIEWS)
        if not isinstance(views, numbers.Integral) or isinstance(views, bool) or views < 1:
            raise ValueError(f"tta views={views!r} must be an int >= 1")
        return make_augmenter(settings), int(views)
    if not isinstance(tta, numbers.Integral) or isinstance(tta, bool) or tta < 0:
        raise ValueError(f"tta={tta!r} must be None, an int >= 0 (number of augmented "
                         "views) or a dict of augmentation settings")
    if tta == 0:
        return None
    settings = DEFAULT_AUGMENTATION if augment is None or augment is False else augment
    return make_augmenter(settings), int(tta)


class _AveragedViews(nn.Module):
    """Log of the mean softmax over the image and ``views`` augmented copies: a softmax
    of this output is the averaged probability (``multilabel``: the logit of the mean
    sigmoid per finding)."""

    def __init__(self, model, augmenter, views, multilabel=False):
        super().__init__()
        self.multilabel = multilabel
        self.model = model
        self.augmenter = augmenter
        self.views = views

    def forward(self, x):
        norm = getattr(self.model, "input_norm", None)
        if norm is not None:  # compact images: augment them normalised, as in training
            x = norm(x)
        link = torch.sigmoid if self.multilabel else functools.partial(torch.softmax,
                                                                           dim=1)
        proba = link(self.model(x).float())
        for _ in range(self.views):
            proba = proba + link(self.model(self.augmenter(x)).float())
        proba = proba / (self.views + 1)
        # multilabel: the logit of the mean, so that a sigmoid of it is the mean again
        return torch.logit(proba, eps=1e-7) if self.multilabel else torch.log(proba)


@contextlib.contextmanager
def tta_context(net, augmenter, views, seed, multilabel=False):
    """Within the block, ``net.module_`` predicts the average over augmented views (of
    the module predictions run on: :meth:`_training._Net.inference_module`)."""
    model = net.module_
    net.module_ = _AveragedViews(net.inference_module(), augmenter.to(net.device),
                                 views, multilabel).eval()
    try:
        with FitRandomness(0 if seed is None else seed, net.device).global_stream():
            yield
    finally:
        net.module_ = model
