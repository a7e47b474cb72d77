"""The command line, end to end in a subprocess: help, a diagnosis, exit codes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "quantlens", *map(str, args)],
                          capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)


def test_help_explains_models_data_and_exit_codes():
    r = _cli("diagnose", "--help")
    assert r.returncode == 0
    for word in ("MODEL", "--bits", "--data", "Hugging Face", "torch.save(model)",
                 "exit codes", "digits-cnn"):
        assert word in r.stdout
    script = shutil.which("quantlens", path=str(Path(sys.executable).parent))
    assert script is not None, "the console script `quantlens` is not installed"
    r2 = subprocess.run([script, "--help"], capture_output=True, text=True, env=ENV)
    assert r2.returncode == 0 and "diagnose" in r2.stdout


def test_diagnose_a_saved_model_end_to_end(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    path = tmp_path / "model.pt"
    torch.save(model, path)
    out = tmp_path / "out" / "report.html"
    r = _cli("diagnose", path, "--bits", "8", "4", "--quick", "--no-progress", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "int8 channel" in r.stdout and "verdict" in r.stdout
    doc = json.loads(out.with_suffix(".json").read_text())
    assert [v["variant"] for v in doc["variants"]] == ["fp32", "int8 channel", "int4 channel"]
    assert "data:image/png;base64," in out.read_text()


def test_exit_codes_and_messages(tmp_path):
    r = _cli("diagnose", tmp_path / "missing.pt")
    assert r.returncode == 3 and "no such file" in r.stderr
    r = _cli("diagnose", "digits-cnn", "--bits", "1")
    assert r.returncode == 2 and "between 2 and 16" in r.stderr
    r = _cli("diagnose", "digits-cnn", "--bits", "four")
    assert r.returncode == 2 and "whole numbers" in r.stderr
    sd = tmp_path / "weights.pt"
    torch.save(nn.Linear(3, 2).state_dict(), sd)
    r = _cli("diagnose", sd)
    assert r.returncode == 4 and "state_dict" in r.stderr
    r = _cli("diagnose", tmp_path)
    assert r.returncode == 4 and "config.json" in r.stderr
    # a model that cannot take the data: the reason, not a traceback
    bad = tmp_path / "bad.pt"
    torch.save(nn.Sequential(nn.Linear(5, 2)), bad)
    r = _cli("diagnose", bad, "--quick")
    assert r.returncode == 4 and "cannot diagnose" in r.stderr
    assert "Traceback" not in r.stderr
    r = _cli("diagnose", "digits-cnn", "--out", tmp_path / "x.pdf")
    assert r.returncode == 2 and ".html" in r.stderr
