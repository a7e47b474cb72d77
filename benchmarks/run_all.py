"""Run every ``benchmarks/bench_*.py`` and write ``benchmarks/RESULTS.md`` from what they print
(``make bench``). Each script measures quantlens and its named peer side by side in one run;
its docstring says what and how, and its output is copied verbatim under that description.

Run: ``python benchmarks/run_all.py [bench_hessian.py ...]`` (default: all of them; naming some
reruns those and replaces their sections, keeping the others).
"""

from __future__ import annotations

import ast
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _summary(script: Path) -> str:
    doc = ast.get_docstring(ast.parse(script.read_text())) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


def main() -> None:
    names = sys.argv[1:] or sorted(p.name for p in HERE.glob("bench_*.py"))
    sections = []
    for name in names:
        script = HERE / name
        print(f"== {name}", flush=True)
        run = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                             cwd=HERE.parent, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        sys.stdout.write(run.stdout)
        if run.returncode != 0:
            raise SystemExit(f"{name} failed with exit code {run.returncode}")
        sections.append(f"## {name}\n\n{_summary(script)}\n\n```\n{run.stdout.rstrip()}\n```\n")
    today = datetime.date.today().isoformat()
    header = (
        "# Benchmark results\n\n"
        f"Written by `make bench` (`benchmarks/run_all.py`) on {today}: {_cpu()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, Python "
        f"{platform.python_version()}. Every script times quantlens and its named peer side "
        "by side in one run (interleaved repeats where it says so); wall-clock times vary "
        "between runs and machines, product counts, errors and the ratios of interleaved "
        "medians much less. Do not edit: rerun `make bench`.\n"
    )
    path = HERE / "RESULTS.md"
    if len(names) < len(list(HERE.glob("bench_*.py"))) and path.exists():
        # a subset: its sections are replaced (or added), the others kept as they were
        old = path.read_text().split("\n## ")[1:]
        kept = {part.split("\n", 1)[0]: "## " + part.rstrip() + "\n" for part in old}
        kept.update({name: text for name, text in zip(names, sections)})
        sections = [kept[k] for k in sorted(kept)]
        header = header.replace(
            "(`benchmarks/run_all.py`)",
            f"(`benchmarks/run_all.py`; {', '.join(names)} since by "
            f"`benchmarks/run_all.py {' '.join(names)}`)")
    path.write_text(header + "\n" + "\n".join(sections))
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
