"""Take docs/img/console.png: a live ``rtseg serve`` with a seeded population (the model tests'
own), a trained model, a goal and two segments, shown by headless Chromium.

    python scripts/console_screenshot.py [--out docs/img/console.png]

Needs Debian's chromium and chromium-driver and the ``test`` extra (selenium).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "img" / "console.png"))
    a = ap.parse_args()

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from engine.client import Client
    from tests.test_console_browser import headless_chromium
    from tests.test_server_models import SPEC, population
    from tests.test_server_support import TOKEN, ServerProcess
    from tests.test_web import read_console_url

    with tempfile.TemporaryDirectory(prefix="rtseg-shot-") as tmp:
        srv = ServerProcess(Path(tmp), "--shards", "2", "--clock", "event", "--token", TOKEN,
                            "--console-port", "0", "--history-interval", "1d")
        try:
            url = read_console_url(srv.proc)
            with Client(srv.target, TOKEN, timeout_s=600) as c:
                c.create_segment("active_viewers", "count(view, 7d) >= 5", "viewed often this week")
                c.create_segment("carted_not_bought", "count(cart, 7d) >= 1 and count(purchase, 7d) == 0",
                                 "abandoned a cart")
                for day in population():
                    c.ingest_columns(**day)
                report = c.train_model(**SPEC)
                c.create_segment("likely_buyers", f'score("{report.name}") >= 0.3', "model says: buys")
                c.create_goal("convert_carts", "carted_not_bought", "purchase",
                              end_ms=c.now_ms + 7 * 86_400_000)
                c.set_traits("u00007", {"country": "TR", "plan": "pro"})

                d = headless_chromium(f"{tmp}/profile", "1440,1900")
                try:
                    wait = WebDriverWait(d, 60)
                    d.get(f"{url}/?token={TOKEN}")
                    wait.until(lambda d: d.find_element(By.ID, "live-status").text == "live")
                    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-segment="active_viewers"]'))
                    d.find_element(By.CSS_SELECTOR, 'tr[data-segment="active_viewers"]').click()
                    d.find_element(By.ID, "seg-name").send_keys("heavy_viewers")
                    d.find_element(By.ID, "expr").send_keys("count(view, 7d) >= 5 and\n  count(cart, 48) >= 1")
                    wait.until(lambda d: d.find_element(By.ID, "expr-status").get_attribute("data-col"))
                    d.find_element(By.ID, "user-id").send_keys("u00007")
                    d.find_element(By.CSS_SELECTOR, "#user-form button").click()
                    wait.until(lambda d: "Traits" in d.find_element(By.ID, "user-out").text)
                    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#models-list li[data-model]"))
                    d.find_element(By.CSS_SELECTOR, "#models-list li[data-model]").click()
                    wait.until(lambda d: d.find_element(By.ID, "model-chart").is_displayed())
                    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#goals-list li[data-goal]"))
                    d.find_element(By.CSS_SELECTOR, "#goals-list li[data-goal]").click()
                    wait.until(lambda d: "segment" in d.find_element(By.ID, "goal-info").text)
                    d.execute_script("window.scrollTo(0, 0)")
                    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
                    d.save_screenshot(a.out)
                finally:
                    d.quit()
        finally:
            srv.stop()
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
