"""Look at a `snakemake --report` page as a person would: in a real browser (headless Chromium), clicking through it.

    python tests/report_browser.py outputs/demo/report.html --out /tmp/report_shots

takes the standard tour (home; each category; the interpretation figures; the tables page) and writes one screenshot
per stop. The tests use `render()` to assert what a reader sees after the same clicks. Chromium comes from Debian's
`chromium` package, installed here when missing (as root), as the Slurm tests install Slurm.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

# Clicks a list of steps once the page has loaded: "text" clicks the link, button or row with exactly that text;
# "view:text" clicks the eye button of the result row with that text. Each step waits for the page to react.
CLICKER = """<script>
window.addEventListener('load', () => {
  const steps = %s;
  const byText = (text) => [...document.querySelectorAll('a, button, span, td, li')]
      .filter(e => e.textContent.trim() === text).pop();
  let i = 0;
  function next() {
    if (i >= steps.length) { document.body.setAttribute('data-tour', 'done'); return; }
    const step = steps[i++];
    const view = step.startsWith('view:');
    const found = byText(view ? step.slice(5) : step);
    if (!found) { document.body.setAttribute('data-tour', 'missing: ' + step); return; }
    const target = view ? found.closest('tr').querySelector('a[iconname=eye]') : (found.closest('a, button, tr') || found);
    target.click();
    setTimeout(next, 700);
  }
  setTimeout(next, 1000);
});
</script>"""

TOUR = {
    "home": [],
    "data": ["1. Data"],
    "training": ["2. Training"],
    "results": ["3. Results"],
    "top_losses": ["3. Results", "interpretation", "view:{out}/interpret/top_losses.png"],
    "by_class": ["3. Results", "interpretation", "view:{out}/interpret/by_class.png"],
    "tables": ["3. Results", "tables", "view:{out}/report/tables.html"],
}


def chromium() -> str | None:
    """The Chromium binary, installed with apt-get when missing and this is root; None if it cannot be had."""
    found = shutil.which("chromium")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True)
    return shutil.which("chromium")


def look(url: str, budget_ms: int, screenshot: Path | None = None, window: str = "1400,1000",
         timeout: int = 120) -> str:
    """The DOM of the page at `url` once `budget_ms` of its virtual time has run (its timers and the requests they
    wait on, without waiting for them in real time); with `screenshot`, also a PNG of what is on screen then."""
    browser = chromium()
    if browser is None:
        raise RuntimeError("Chromium is not installed (apt-get install chromium)")
    command = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--window-size={window}", f"--virtual-time-budget={budget_ms}"]
    dom = subprocess.run([*command, "--dump-dom", url], capture_output=True, text=True, timeout=timeout,
                         check=True).stdout
    if screenshot:
        subprocess.run([*command, f"--screenshot={screenshot}", url], capture_output=True, timeout=timeout, check=True)
    return dom


def render(report: Path, steps: list[str], screenshot: Path | None = None, timeout: int = 120) -> str:
    """The page's DOM after clicking through `steps`; with `screenshot`, also a PNG of what is on screen then."""
    page = report.read_text()
    end = page.rfind("</body>")
    with tempfile.TemporaryDirectory() as folder:
        toured = Path(folder) / "report.html"
        toured.write_text(page[:end] + CLICKER % json.dumps(steps) + page[end:])
        return look(toured.as_uri(), 2000 + 1000 * len(steps), screenshot, timeout=timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="the HTML file `snakemake --report` wrote")
    parser.add_argument("--out", type=Path, required=True, help="folder for the screenshots")
    parser.add_argument("--out-dir", default="outputs/demo", help="the recipe's out_dir, as the report names files")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, steps in TOUR.items():
        steps = [step.format(out=args.out_dir) for step in steps]
        dom = render(args.report, steps, args.out / f"{name}.png")
        state = "ok" if 'data-tour="done"' in dom else dom.split('data-tour="', 1)[-1].split('"', 1)[0]
        print(f"{name:<12} {state:<40} {args.out / f'{name}.png'}")


if __name__ == "__main__":
    main()
