"""sklearn's own estimator checks on CXRClassifier.

2-D tabular X of shape (n, d) is taken as n one-channel images of 1 × d pixels (see
``_inputs.as_images``), which lets every generic check run on the small CNN. All
checks but three pass; ``EXPECTED_FAILED_CHECKS`` below names those and why. One is
*skipped by sklearn itself* for environment reasons: ``check_array_api_input`` (needs
SCIPY_ARRAY_API=1 and array-api-strict); the checks that need pandas run (pandas is in
the ``test`` extra).

``ImageLoader`` declares ``two_d_array=False`` (its input is images or file paths), for
which sklearn runs no generic checks; tests/test_preprocessing.py covers its API instead.
"""

import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

from cxr_estimators import CXRClassifier

torch.set_num_threads(1)

#: Checks an image estimator cannot satisfy, with the reason (non-strict xfail: it may pass).
EXPECTED_FAILED_CHECKS = {
    "check_methods_sample_order_invariance": (
        "float32 convolutions on CPU can sum in an order that depends on where an image "
        "sits in its batch (most likely the GEMM's blocking), so permuting the samples changes some outputs in the "
        "last bit (seen: 6e-8 on a log-odds of -0.56); the check allows rtol=1e-7. The "
        "predicted labels are unaffected."),
    "check_methods_subset_invariance": (
        "the same cause with the batch's size: a subset is predicted in smaller batches, "
        "for which oneDNN may pick another convolution kernel. It passes on a CPU with "
        "AMX and fails on an AVX2-only one (seen there: 5e-7 on a log-odds of -3.55, "
        "rtol=1e-7 allowed); the predicted labels are unaffected."),
    "check_sample_weight_equivalence_on_dense_data": (
        "mini-batch training: an image repeated k times is not the same as weight k (the "
        "copies change how many batches an epoch has and which images share one), and an "
        "image of weight 0 still takes a place in its batch. Each batch's loss is the "
        "weighted mean of its images' losses (tests/test_training.py checks that), as "
        "sklearn's MLPClassifier does; equal weights give exactly the unweighted model."),
}


@parametrize_with_checks(
    [CXRClassifier(backbone="simple_cnn", max_epochs=20, batch_size=16, neurons=16, lr=1e-2,
                   validation_fraction=0, early_stopping=None, random_state=0)],
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
