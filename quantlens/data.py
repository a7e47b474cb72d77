"""Embedded data: scikit-learn's handwritten digits (1,797 images of 8x8 pixels).

The data ship inside scikit-learn, so nothing is downloaded. Pixel values (0-16) are scaled
to [0, 1] and shaped ``(N, 1, 8, 8)``; every model in :mod:`quantlens.models` accepts that
shape. Every analysis in quantlens also accepts any other ``torch.utils.data.DataLoader``:
see :mod:`quantlens.batches` for the batches it reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, TensorDataset


@dataclass(frozen=True)
class DigitsSplit:
    """A deterministic stratified train/test split of the digits data.

    ``x_*`` are float32 tensors of shape ``(N, 1, 8, 8)`` in [0, 1]; ``y_*`` int64 labels 0-9.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def __repr__(self) -> str:
        return f"DigitsSplit(train={len(self.y_train)}, test={len(self.y_test)}, classes=10)"


def load_digits_split(test_size: float = 0.25, seed: int = 0) -> DigitsSplit:
    """Load the digits and split them (stratified, seeded) into train and test sets.

    Parameters
    ----------
    test_size : float
        Fraction of the 1,797 images held out, in (0, 1). The default gives 1,347 / 450.
    seed : int
        Seed of the split.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not isinstance(test_size, float) or not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be a float in (0, 1), got {test_size!r}")
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y
    )

    def images(a):
        return torch.tensor(a, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0

    return DigitsSplit(
        images(x_tr), torch.tensor(y_tr), images(x_te), torch.tensor(y_te)
    )


def digits_loaders(
    batch_size: int = 64, test_size: float = 0.25, seed: int = 0, shuffle_train: bool = True,
    n_train: int | None = None,
) -> tuple[DataLoader, DataLoader]:
    """Train and test DataLoaders over :func:`load_digits_split`.

    ``seed`` fixes the split. The train loader shuffles with torch's global RNG, which
    :func:`quantlens.fit` seeds, so a training run is reproducible; the test loader does not
    shuffle. Analyses that sum over the data (Hessians, landscapes) give bitwise repeatable
    results with ``shuffle_train=False``: the batches, and so the float summation order,
    are then the same on every pass. ``n_train`` keeps only the first ``n_train`` training
    images (the split is already shuffled and stratified), e.g. a fixed sample on which to
    measure curvature cheaply.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    split = load_digits_split(test_size=test_size, seed=seed)
    if n_train is not None and (isinstance(n_train, bool) or not isinstance(n_train, int)
                                or not 1 <= n_train <= len(split.y_train)):
        raise ValueError(f"n_train must be an int in [1, {len(split.y_train)}], got {n_train!r}")
    x, y = split.x_train[:n_train], split.y_train[:n_train]
    train = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle_train)
    test = DataLoader(TensorDataset(split.x_test, split.y_test), batch_size=batch_size)
    return train, test


# Fixed, varied English sentences (facts, questions, instructions, dialogue, technical text,
# numbers, negation, near-paraphrases) for sentence-embedding checks of pretrained encoders,
# e.g. how far quantization moves all-MiniLM-L6-v2 embeddings (quantlens.alpha).
SENTENCES: tuple[str, ...] = (
    "The cat is sleeping on the warm windowsill.",
    "A kitten naps in the sun by the window.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "How do I reset my password if I no longer have access to my email?",
    "Please preheat the oven to 180 degrees before adding the tray.",
    "The mitochondria is the part of the cell that produces most of its energy.",
    "I can't believe we missed the last train home again!",
    "The new bridge is 1,200 metres long and took four years to build.",
    "She did not enjoy the film, although the soundtrack was beautiful.",
    "Quantizing the weights to four bits shrinks the model by a factor of eight.",
    "Gradient descent updates the parameters in the direction of steepest descent.",
    "Our team won the championship in the final minute of the match.",
    "Could you recommend a quiet café where I can read for a few hours?",
    "Heavy rain and strong winds are expected along the coast tonight.",
    "The contract must be signed by both parties before the end of the month.",
    "Photosynthesis converts sunlight, water and carbon dioxide into sugar and oxygen.",
    "He plays the violin every evening to relax after work.",
    "The museum is closed on Mondays and public holidays.",
    "Python lists are mutable, whereas tuples cannot be changed after creation.",
    "Thanks so much for your help yesterday, it really made a difference.",
)


def sentence_loader(tokenizer, sentences=SENTENCES, batch_size: int = 10,
                    max_length: int = 64) -> DataLoader:
    """A DataLoader of tokenized sentences (dicts of model keywords, padded per batch, no
    labels) for a Hugging Face encoder, e.g. with :func:`quantlens.output_distance`."""
    if isinstance(sentences, str) or not sentences:
        raise ValueError("sentences must be a non-empty sequence of strings")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    rows = [dict(tokenizer(s, truncation=True, max_length=max_length)) for s in sentences]

    def collate(batch):
        return dict(tokenizer.pad(batch, return_tensors="pt"))

    return DataLoader(rows, batch_size=batch_size, collate_fn=collate)

