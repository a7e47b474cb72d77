"""The bit-collapse experiment's larger sweep, beyond what a chapter can run in 3 minutes.

Two parts, both under pinned numerics, written to tables beside this script that the
bit-collapse chapter reads (it reruns a subset, which must agree bitwise):

* ``mlp-per-width``: the chapter's experiment (digits MLP, 6 settings x SGD/SAM/ASAM x 5
  seeds) with ρ searched *at every width* (:func:`quantlens.bitcollapse.rho_search` with the
  setting's own QAT), instead of once at int4.
* ``cnn``: the digits CNN (two convolutions and two Linear layers, every one quantized),
  FP32/int8/int4/int2 x SGD/SAM x 5 seeds, SAM's ρ searched at int4 on the CNN. Under
  pinned numerics (one core, no vector kernels) its convolutions make it ~20x slower than
  the MLP, which is why it is not in the chapter.

Outputs: ``bit_collapse_models.csv`` (one row per trained network: the ``models`` table of
:class:`quantlens.BitCollapse` plus ``fgsm@*``/``shift@*``/... and ``deploy@*`` accuracies,
and ``sweep``, ``model``), ``bit_collapse_rho.csv`` (every ρ-search row, with ``sweep`` and
``search_setting``). Floats are written with 17 significant digits, so they read back
bitwise.

Run: ``make sweep`` (about 15 minutes on one core), or
``python experiments/bit_collapse_sweep.py [--part mlp-per-width|cnn|all]`` under the
pinned environment (``env $(python quantlens/numerics.py) python ...``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

import quantlens as ql
from quantlens import bitcollapse as bc

HERE = Path(__file__).parent
MODELS = HERE / "bit_collapse_models.csv"
RHO = HERE / "bit_collapse_rho.csv"
CNN_SETTINGS = ("fp32", "int8", "int4", "int2")
CNN_SAM_RHOS = (0.05, 0.2, 0.5, 1.0)


def per_width(seeds: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The MLP experiment with ρ searched at every setting's own width."""
    models, searches = [], []
    for setting in bc.SETTINGS:
        search = bc.rho_search(setting, progress=True)
        rho = bc.best_rho(search)
        print(f"{setting}: ρ {rho}", flush=True)
        r = bc.bit_collapse((setting,), bc.OPTIMIZERS, seeds, rho=rho, curves_for=(),
                            progress=True)
        models.append(r.wide().assign(sweep="mlp-per-width", model="mlp"))
        searches.append(search.assign(sweep="mlp-per-width", search_setting=setting))
    return pd.concat(models, ignore_index=True), pd.concat(searches, ignore_index=True)


def cnn(seeds: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The digits CNN: SGD against SAM, ρ searched at int4."""
    config = bc.CollapseConfig(model="cnn")
    search = bc.rho_search("int4", sam_rhos=CNN_SAM_RHOS, asam_rhos=(), config=config,
                           progress=True)
    rho = bc.best_rho(search, ("sam",))
    print(f"cnn: ρ {rho}", flush=True)
    r = bc.bit_collapse(CNN_SETTINGS, ("sgd", "sam"), seeds, rho=rho, config=config,
                        curves_for=(), progress=True)
    return (r.wide().assign(sweep="cnn", model="cnn"),
            search.assign(sweep="cnn", search_setting="int4"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["mlp-per-width", "cnn", "all"], default="all")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    print(ql.reproducible())
    parts = {"mlp-per-width": per_width, "cnn": cnn}
    chosen = list(parts) if args.part == "all" else [args.part]
    old_m = pd.read_csv(MODELS) if MODELS.exists() else pd.DataFrame(columns=["sweep"])
    old_r = pd.read_csv(RHO) if RHO.exists() else pd.DataFrame(columns=["sweep"])
    for name in chosen:
        start = time.time()
        m, r = parts[name](args.seeds)
        old_m = pd.concat([old_m[old_m.sweep != name], m], ignore_index=True)
        old_r = pd.concat([old_r[old_r.sweep != name], r], ignore_index=True)
        old_m.to_csv(MODELS, index=False, float_format="%.17g")
        old_r.to_csv(RHO, index=False, float_format="%.17g")
        print(f"{name}: {len(m)} networks in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
