"""Many quantized variants with their measured damage, to validate verdict rules.

For the digits MLP and CNN, each trained with 5 seeds, and for the pretrained
all-MiniLM-L6-v2 (label-free), every model is quantized at 2, 3, 4, 5, 6 and 8 bits, per
tensor and per channel, and :class:`quantlens.QuantDiagnostic` measures each variant
(accuracy or embedding cosine, output KL and SQNR, λmax and trace ratios, basin width, weight
SQNR). :func:`quantlens.verdicts.validate` then scores the seed's "λmax ratio > 1.5" rule and
the best threshold rule of each metric (leave-one-seed-out); the diagnostic's
``CHOSEN_RULE`` and ``VALIDATION`` come from this file (``tests/test_verdicts.py``). The
diagnose chapter reruns a subset, which must match bitwise.

Writes ``verdict_sweep.csv`` (17 significant digits). Run: ``make sweep`` or
``env $(python quantlens/numerics.py) python experiments/verdict_sweep.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

import quantlens as ql
from quantlens.diagnose import digits_variants, encoder_variants

HERE = Path(__file__).parent
SEEDS = range(5)


def main() -> None:
    print(ql.reproducible())
    start = time.time()
    parts = []
    for name in ("mlp", "cnn"):
        for seed in SEEDS:
            parts.append(digits_variants(name, seed))
            print(f"digits-{name} seed {seed}: {time.time() - start:.0f} s", flush=True)
    parts.append(encoder_variants())
    print(f"all-MiniLM-L6-v2: {time.time() - start:.0f} s", flush=True)
    table = pd.concat(parts, ignore_index=True)
    table.to_csv(HERE / "verdict_sweep.csv", index=False, float_format="%.17g")
    variants = table[table["variant"] != "fp32"]
    print(ql.verdicts.validate(variants).to_string())
    print(ql.verdicts.validation_summary(variants))


if __name__ == "__main__":
    main()
