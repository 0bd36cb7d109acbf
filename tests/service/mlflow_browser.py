"""The MLflow UI as a user meets it: Debian's headless Chromium, driven by selenium through Debian's chromedriver
(``Service('/usr/bin/chromedriver')``: nothing is downloaded), opens an experiment from the link the service hands
out, checks that the trial runs are listed and a ``val_top1`` chart renders, and saves a screenshot.

Also a command, for the screenshot in docs/ from a real ``sibnn demo`` run (its MLflow store stays in the state
folder; an MLflow server is started on it for the shot)::

    python -m tests.service.mlflow_browser --home ~/.sibnn --out docs/mlflow-demo.png
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--window-size=1600,1000")


def chromium(user_data_dir: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS:
        opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={user_data_dir}")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def _wait(driver, what: str, check, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check(driver)
        except Exception:  # noqa: BLE001 - the page is still rendering: stale or missing elements
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"MLflow UI: {what} not seen within {timeout:.0f} s at {driver.current_url}")
        time.sleep(0.5)


def check_experiment_page(link: str, run_names: list[str], screenshot: Path, timeout: float = 90) -> dict:
    """Open ``link`` (an experiment link the service hands out), assert the runs named ``run_names`` are listed,
    switch to the chart view and assert a ``val_top1`` chart has drawn its lines; save a screenshot. Returns what
    was seen (page text lengths, the chart count) for the caller's assertions."""
    from selenium.webdriver.common.by import By

    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sibnn-chromium-") as profile:
        driver = chromium(Path(profile))
        try:
            driver.get(link)
            body = lambda d: d.find_element(By.TAG_NAME, "body").text  # noqa: E731
            _wait(driver, f"the runs {run_names}", lambda d: all(n in body(d) for n in run_names), timeout)
            listed = body(driver)
            # The chart view of the same experiment: MLflow keeps the view in the query (compareRunsMode).
            driver.get(driver.current_url + "&compareRunsMode=CHART")
            # Charts below the fold are drawn only when scrolled to: narrow the grid to val_top1 with its search box.
            search = _wait(driver, "the chart search box", lambda d: d.find_element(
                By.CSS_SELECTOR, "input[placeholder='Search metric charts']"), timeout)
            search.send_keys("val_top1")

            def val_top1_chart(d):
                area = d.find_element(By.CSS_SELECTOR, "[data-testid='experiment-view-compare-runs-chart-area']")
                titles = area.find_elements(By.XPATH, ".//*[normalize-space(text())='val_top1']")
                for title in titles:
                    card = title
                    for _ in range(8):  # up from the title to the card holding the plot
                        card = card.find_element(By.XPATH, "..")
                        paths = card.find_elements(By.CSS_SELECTOR, "svg .scatterlayer path")
                        if paths:
                            drawn = [p for p in paths if len(p.get_attribute("d") or "") > 20]
                            return card if drawn else None
                return None

            try:
                card = _wait(driver, "a drawn val_top1 chart", val_top1_chart, timeout)
            except AssertionError:
                driver.save_screenshot(str(screenshot))  # what the page showed instead, for the failure report
                raise
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", card)
            time.sleep(1.0)
            driver.save_screenshot(str(screenshot))
            return {"listed": listed, "url": driver.current_url, "chart_text": card.text}
        finally:
            driver.quit()


def main(argv=None) -> int:
    import sys

    from mlflow.tracking import MlflowClient

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from jobs import tracking
    from console import stack
    from service.results import experiment_link

    p = argparse.ArgumentParser(description="screenshot an experiment of a sibnn state folder in the MLflow UI")
    p.add_argument("--home", type=Path, default=Path("~/.sibnn"))
    p.add_argument("--experiment-id", default=None, help="service experiment id (default: the newest)")
    p.add_argument("--out", type=Path, default=Path("docs/mlflow-demo.png"))
    args = p.parse_args(argv)
    ml = stack.start_mlflow(args.home.expanduser())
    try:
        c = MlflowClient(ml.url)
        exps = [e for e in c.search_experiments(order_by=["creation_time DESC"])
                if e.name.startswith("sibnn-") and (args.experiment_id is None
                                                    or e.name == tracking.experiment_name(args.experiment_id))]
        if not exps:
            raise SystemExit("no sibnn experiment in that MLflow store")
        exp = exps[0]
        names = [r.info.run_name for r in c.search_runs([exp.experiment_id],
                                                        f"tags.`{tracking.TAG_ROLE}` = 'trial'")]
        seen = check_experiment_page(experiment_link(ml.url, exp.experiment_id), names, args.out)
        print(f"{len(names)} trial runs listed, val_top1 chart drawn; screenshot {args.out} ({seen['url']})")
    finally:
        ml.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
