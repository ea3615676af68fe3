"""Fashion-MNIST as Debian's dataset-fashion-mnist installs it (skipped where it is absent)."""

import numpy as np
import pytest

pytest.importorskip("torch")

from mimicnorm_deploy.training.data import FASHION_MNIST_DIR, load_fashion_mnist  # noqa: E402

pytestmark = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")


def test_fashion_mnist_has_the_published_splits():
    dataset = load_fashion_mnist()
    assert dataset.train_images.shape == (60000, 1, 32, 32) and dataset.test_images.shape == (10000, 1, 32, 32)
    # The published splits are balanced: 6000 / 1000 images per class.
    assert np.bincount(dataset.train_labels).tolist() == [6000] * 10
    assert np.bincount(dataset.test_labels).tolist() == [1000] * 10
    mean, std = dataset.channel_stats()
    assert 0.2 < mean[0] < 0.3 and 0.3 < std[0] < 0.4  # 28x28 stats (0.286 / 0.353) diluted by the padding
