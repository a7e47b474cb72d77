"""The command line: ``quantlens diagnose MODEL`` (or ``python -m quantlens diagnose MODEL``).

Exit codes: 0 success; 2 bad arguments (e.g. bits outside 2..16); 3 a path that does not
exist; 4 a model or data source quantlens cannot handle (the message says why).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_USAGE, EXIT_MISSING, EXIT_UNSUPPORTED = 0, 2, 3, 4

DESCRIPTION = """\
Diagnose what quantization does to a model. The model is quantized at each --bits
(simulated, weights only, the chosen --granularity); every variant is measured against the
full-precision model: accuracy (or, without labels, embedding cosine), output KL and SQNR,
Hessian sharpness (lambda_max, trace), loss-basin width, per-layer weight error and per-layer
damage. A self-contained HTML report and the same results as JSON are written to --out.
"""

EPILOG = """\
MODEL is one of:
  a Hugging Face model folder (config.json, weights, tokenizer), e.g. a sentence encoder;
    it is diagnosed without labels (cosine distance to its own FP32 embeddings)
  a file written by torch.save(model) (a whole nn.Module, not a state_dict; it is
    unpickled, so only load files you trust)
  digits-cnn or digits-mlp: a small built-in model trained on the spot (about 10 s)

DATA (--data) is one of:
  digits      scikit-learn's 8x8 digits, (N, 1, 8, 8) images with labels (default for
              torch models)
  sentences   20 built-in English sentences (default for Hugging Face folders)
  FILE.txt    your sentences, one per line (Hugging Face folders)
  FILE.pt     torch.save((inputs, labels)) or torch.save(inputs): tensors, first dim = examples

examples:
  quantlens diagnose digits-cnn --bits 8 4 2 --out cnn.html
  quantlens diagnose path/to/all-MiniLM-L6-v2 --bits 8 4 --quick
  python -m quantlens diagnose my_model.pt --data my_batch.pt --granularity tensor

exit codes: 0 ok, 2 bad arguments, 3 path not found, 4 model or data not supported
"""


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _bits(text: str) -> int:
    try:
        b = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bits must be whole numbers, got {text!r}") from None
    if not 2 <= b <= 16:
        raise argparse.ArgumentTypeError(f"bits must be between 2 and 16, got {b}")
    return b


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="quantlens", description="See and measure what quantization does to a model.")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    d = sub.add_parser("diagnose", help="quantize a model at several bit widths and write a "
                       "diagnostic report", description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("model", metavar="MODEL", help="Hugging Face folder, torch.save(model) "
                   "file, or digits-cnn / digits-mlp (see below)")
    d.add_argument("--data", default=None, help="digits, sentences, FILE.txt or FILE.pt "
                   "(default: digits for torch models, sentences for Hugging Face folders)")
    d.add_argument("--bits", type=_bits, nargs="+", default=[8, 4], metavar="B",
                   help="weight bit widths to try, 2..16 (default: 8 4)")
    d.add_argument("--granularity", choices=["tensor", "channel", "group"], default="channel",
                   help="one scale per tensor, per output channel, or per group of 128 "
                   "inputs (default: channel)")
    d.add_argument("--out", default="quantlens-report.html", metavar="FILE.html",
                   help="report path; the JSON goes beside it (default: "
                   "quantlens-report.html)")
    d.add_argument("--quick", action="store_true", help="skip the Hessian and loss-basin "
                   "steps (outcomes and per-layer damage only)")
    d.add_argument("--max-batches", type=int, default=None, metavar="N",
                   help="evaluate on at most N batches")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    return top


def _load_model(spec: str):
    """``(model, tokenizer or None)``."""
    import torch
    from torch import nn

    if spec in ("digits-cnn", "digits-mlp"):
        from .train import trained_digits_model

        model, _ = trained_digits_model(spec.split("-")[1])
        return model, None
    path = Path(spec)
    if not path.exists():
        raise CliError(f"MODEL: no such file or folder: {spec}", EXIT_MISSING)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise CliError(f"MODEL: {spec} is a folder without config.json, not a Hugging Face "
                           "model folder", EXIT_UNSUPPORTED)
        from .models import load_pretrained

        try:
            pre = load_pretrained(path)
        except Exception as err:  # noqa: BLE001 - reported to the user with its reason
            raise CliError(f"MODEL: cannot load the Hugging Face folder {spec}: {err}",
                           EXIT_UNSUPPORTED) from err
        return pre.model, pre.tokenizer
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise CliError(f"MODEL: cannot read {spec} with torch.load: {err}",
                       EXIT_UNSUPPORTED) from err
    if isinstance(obj, dict):
        raise CliError(f"MODEL: {spec} holds a state_dict (weights without the architecture); "
                       "save the whole model with torch.save(model, path)", EXIT_UNSUPPORTED)
    if not isinstance(obj, nn.Module):
        raise CliError(f"MODEL: {spec} holds a {type(obj).__name__}, not a torch.nn.Module",
                       EXIT_UNSUPPORTED)
    return obj, None


def _loader(data: str | None, tokenizer):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from .data import SENTENCES, digits_loaders, sentence_loader

    data = data or ("sentences" if tokenizer is not None else "digits")
    if data == "digits":
        train, test = digits_loaders(shuffle_train=False)
        return train, test
    if data == "sentences" or data.endswith(".txt"):
        if tokenizer is None:
            raise CliError("--data: sentences need a Hugging Face model folder with a "
                           "tokenizer", EXIT_UNSUPPORTED)
        sentences = SENTENCES
        if data != "sentences":
            if not os.path.exists(data):
                raise CliError(f"--data: no such file: {data}", EXIT_MISSING)
            sentences = [s.strip() for s in Path(data).read_text(encoding="utf-8").splitlines()
                         if s.strip()]
            if not sentences:
                raise CliError(f"--data: {data} has no sentence", EXIT_UNSUPPORTED)
        return sentence_loader(tokenizer, sentences), None
    if not os.path.exists(data):
        raise CliError(f"--data: no such file: {data}", EXIT_MISSING)
    try:
        obj = torch.load(data, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise CliError(f"--data: cannot read {data} as tensors: {err}", EXIT_UNSUPPORTED) \
            from err
    tensors = (obj,) if isinstance(obj, torch.Tensor) else tuple(obj) \
        if isinstance(obj, (tuple, list)) else ()
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors) or \
            len({len(t) for t in tensors}) != 1:
        raise CliError(f"--data: {data} must hold a tensor or a tuple (inputs, labels) of "
                       "tensors with the same first dimension", EXIT_UNSUPPORTED)
    return DataLoader(TensorDataset(*tensors), batch_size=64), None


def diagnose(args: argparse.Namespace) -> int:
    from .diagnose import QuantDiagnostic

    if args.max_batches is not None and args.max_batches < 1:
        raise CliError("--max-batches must be a positive integer", EXIT_USAGE)
    if not args.out.lower().endswith((".html", ".htm")):
        raise CliError(f"--out must end in .html, got {args.out}", EXIT_USAGE)
    model, tokenizer = _load_model(args.model)
    loader, eval_loader = _loader(args.data, tokenizer)
    try:
        diag = QuantDiagnostic(model, loader, eval_loader=eval_loader,
                               hessian_batches=1 if tokenizer is not None else 4)
        for b in dict.fromkeys(args.bits):
            diag.add_quantized(b, granularity=args.granularity)
        diag.run(hessian=not args.quick, landscape=not args.quick,
                 max_batches=args.max_batches, progress=not args.no_progress)
    except (TypeError, ValueError, RuntimeError) as err:
        raise CliError(f"cannot diagnose this model with this data: {err}",
                       EXIT_UNSUPPORTED) from err
    html_path, json_path = diag.report(args.out)
    v = diag.result.variants
    outcome = "cosine" if diag.result.label_free else "accuracy"
    cols = [c for c in ("variant", "size_mb", outcome, "kl", "lambda_max_ratio", "degraded",
                        "verdict", "verdict_seed") if c in v]
    print(v[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"report: {html_path}\njson:   {json_path}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)  # exits with 2 on bad arguments
    try:
        return diagnose(args)
    except CliError as err:
        print(f"quantlens: error: {err}", file=sys.stderr)
        return err.code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
