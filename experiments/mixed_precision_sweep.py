"""The mixed-precision study of the digits CNN over 5 training seeds, too slow for a chapter.

Under pinned numerics the CNN's convolutions run on one core without vector kernels, and
training it for each seed dominates. :func:`quantlens.mixed_precision.digits_study` on
the CNN (no brute-force optimum: 10 widths ^ 4 layers is too many configurations) writes
``mixed_precision_cnn_<table>.csv`` beside this script (17 significant digits, allocations'
``bits`` as JSON); the mixed-precision chapter reads them and reruns seed 0, which must
match bitwise.

Run: ``make sweep`` or ``env $(python quantlens/numerics.py) python
experiments/mixed_precision_sweep.py`` (about 1 minute).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import quantlens as ql
from quantlens import mixed_precision as mp

HERE = Path(__file__).parent


def main() -> None:
    print(ql.reproducible())
    start = time.time()
    tables = mp.digits_study("cnn", seeds=5, optimum=False, progress=True)
    for name, table in tables.items():
        if "bits" in table.columns and table.bits.map(type).eq(dict).any():
            table = table.assign(bits=table.bits.map(json.dumps))
        table.to_csv(HERE / f"mixed_precision_cnn_{name}.csv", index=False,
                     float_format="%.17g")
    print(f"cnn: {len(tables['reference'])} seeds in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
