import numpy as np
import pytest
import torch

torch.set_num_threads(1)


def _toy_images(n=48, size=16, classes=("normal", "pneumonia"), seed=0, channels=1):
    """Noise images; class k carries a bright patch in corner k, so a small CNN learns it."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, channels, size, size), dtype=np.float32) * 0.3
    y = np.array([classes[i % len(classes)] for i in range(n)])
    q = size // 3
    corners = [(0, 0), (0, size - q), (size - q, 0), (size - q, size - q)]
    for k, label in enumerate(classes):
        r, c = corners[k % 4]
        X[y == label, :, r:r + q, c:c + q] += 0.7
    return X, y


@pytest.fixture
def toy_binary():
    return _toy_images()


@pytest.fixture
def toy_multiclass():
    return _toy_images(n=60, classes=("bacterial", "normal", "viral"))


@pytest.fixture
def small_clf_params():
    return dict(backbone="simple_cnn", max_epochs=3, batch_size=16, neurons=16,
                random_state=0, lr=1e-2)
