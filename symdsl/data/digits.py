"""``digits``: scikit-learn's 1,797 real 8x8 handwritten digits, a real image task that trains in seconds."""
from __future__ import annotations

import torch

from ..errors import UsageError
from .base import Dataset, Split


def load_digits_dataset(*, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """The digits dataset, split 80/20 stratified by class with ``seed``.

    Pixels (0..16) are scaled to [0, 1], then standardised with the mean and standard deviation
    of the *train* split (one value each, as for a one-channel image), so the test split carries
    no information into the normalisation. Inputs are ``(N, 1, 8, 8)`` float32, labels int64.

    >>> ds = load_digits_dataset(seed=0)
    >>> len(ds.train), len(ds.test), tuple(ds.train.inputs.shape[1:]), ds.num_classes
    (1437, 360, (1, 8, 8), 10)
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise UsageError("the digits dataset needs scikit-learn: pip install 'symdsl[data]'") from None
    if not 0 < test_fraction < 1:
        raise UsageError(f"test_fraction must be between 0 and 1, not {test_fraction}")
    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float() / 16.0  # (1797, 8, 8) in [0, 1]
    labels = torch.from_numpy(bunch.target).long()           # (1797,)
    index = torch.arange(len(labels)).numpy()
    train_index, test_index = train_test_split(index, test_size=test_fraction, random_state=seed,
                                               stratify=labels.numpy())
    train_x, test_x = images[train_index], images[test_index]
    mean, std = train_x.mean(), train_x.std()
    # (N, 8, 8) -> (N, 1, 8, 8): one channel, the layout image models expect.
    train_x = ((train_x - mean) / std).unsqueeze(1).contiguous()
    test_x = ((test_x - mean) / std).unsqueeze(1).contiguous()
    return Dataset(
        name="digits", task="classification",
        train=Split(train_x, labels[train_index]), test=Split(test_x, labels[test_index]),
        in_chans=1, img_size=8, num_classes=10,
        info={"source": "sklearn.datasets.load_digits", "seed": seed, "test_fraction": test_fraction,
              "pixel_mean": float(mean), "pixel_std": float(std)},
    )
