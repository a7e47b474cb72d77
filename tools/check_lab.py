"""Drive the book's JupyterLab in headless Chromium, as a reader would.

Usage (needs Debian's chromium + chromium-driver and `pip install selenium`; not part of
`make test`):

    make lab LAB_ARGS="--no-browser --port=8899 --IdentityProvider.token= \\
        --LabApp.expose_app_in_browser=True" &
    python tools/check_lab.py quantization --shots /tmp/lab

Opens `book/CHAPTER.md` by double-click semantics (the default viewer), checks that it opens
as a notebook, runs all cells, moves the first explorer slider and checks that the explorer
reacts, takes screenshots, and closes the notebook without saving. Afterwards `git status`
must show no change: the committed .ipynb (nbval's reference) is never rewritten.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys


def wait(driver, script: str, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("chapter")
    parser.add_argument("--url", default="http://localhost:8899")
    parser.add_argument("--shots", default="/tmp/lab")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    shots = Path(args.shots)
    shots.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parent.parent
    before = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True,
                            text=True).stdout

    opts = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1400"):
        opts.add_argument(flag)
    opts.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(options=opts,
                              service=webdriver.ChromeService("/usr/bin/chromedriver"))
    try:
        driver.get(f"{args.url}/lab")
        wait(driver, "return window.jupyterapp && window.jupyterapp.started !== undefined",
             120, "JupyterLab")
        time.sleep(3)
        # open the file with its default viewer, as a double-click in the file browser does
        driver.execute_script(
            "window.jupyterapp.commands.execute('docmanager:open', "
            f"{{path: '{args.chapter}.md'}})")
        kind = wait(driver, """
            const w = window.jupyterapp.shell.currentWidget;
            return w && w.context && w.content && w.content.node.classList.contains('jp-Notebook')
                   ? 'notebook' : (w && w.content && w.content.node.className) || null;""",
                    60, "the chapter to open")
        print(f"{args.chapter}.md opened as: {kind}")
        if kind != "notebook":
            raise SystemExit(f"FAIL: {args.chapter}.md did not open as a notebook ({kind})")
        wait(driver, """const w = window.jupyterapp.shell.currentWidget;
            return w.sessionContext && w.sessionContext.session &&
                   w.sessionContext.session.kernel &&
                   w.sessionContext.session.kernel.status === 'idle';""", 120, "the kernel")
        kernel = driver.execute_script("return window.jupyterapp.shell.currentWidget"
                                       ".sessionContext.session.kernel.name")
        print(f"kernel: {kernel}")
        driver.save_screenshot(str(shots / f"{args.chapter}_before.png"))
        start = time.time()
        driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        time.sleep(5)
        wait(driver, """const w = window.jupyterapp.shell.currentWidget;
            const busy = [...w.content.node.querySelectorAll('.jp-InputPrompt')]
                .some(p => p.textContent.includes('*'));
            return !busy && w.sessionContext.session.kernel.status === 'idle';""",
             args.timeout, "Run All")
        print(f"Run All finished in {time.time() - start:.0f} s")
        errors = driver.execute_script("""return [...document.querySelectorAll(
            '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
            .map(e => e.textContent).filter(t => t.includes('Error')).length""")
        print(f"cells with errors: {errors}")
        sliders = driver.find_elements(By.CSS_SELECTOR, ".widget-slider .noUi-handle, "
                                                        ".widget-slider .slider-handle")
        readouts = driver.find_elements(By.CSS_SELECTOR, ".widget-html-content")
        print(f"explorer sliders: {len(sliders)}, readouts: {len(readouts)}")
        if sliders:
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", sliders[0])
            text_before = readouts[0].text if readouts else ""
            sliders[0].click()
            sliders[0].send_keys(Keys.ARROW_RIGHT)
            time.sleep(6)
            text_after = readouts[0].text if readouts else ""
            print(f"readout before: {text_before[:70]!r}")
            print(f"readout after:  {text_after[:70]!r}")
            print("explorer reacts:", text_before != text_after)
            driver.save_screenshot(str(shots / f"{args.chapter}_explorer.png"))
        # close without saving
        driver.execute_script("""const w = window.jupyterapp.shell.currentWidget;
            w.context.model.dirty = false; w.dispose();""")
        time.sleep(2)
    finally:
        driver.quit()
    after = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True,
                           text=True).stdout
    print("git status unchanged:", before == after)
    if before != after:
        print(after)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
