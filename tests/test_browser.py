"""The browser harness itself: its checks must see a broken page as broken, or a clean
result from it on MLflow's UI or the report page would mean nothing."""
from __future__ import annotations

import base64
import io
from pathlib import Path

from tests.browser import chromium, page_problems


def png_data_uri() -> str:
    """A small real plot, as a page would embed one."""
    import matplotlib

    matplotlib.use("Agg")  # no display here
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
    ax.plot([0, 1, 2], [0, 1, 0])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def page(path: Path, body: str) -> str:
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>t</title></head><body>{body}</body></html>")
    return path.as_uri()


def test_a_clean_page_has_no_problems(tmp_path: Path) -> None:
    url = page(tmp_path / "good.html", f"<p>a figure</p><img alt='plot' src='{png_data_uri()}'>")
    with chromium() as driver:
        assert page_problems(driver, url) == []
        # The image really is there with pixels, not merely unreported.
        assert driver.execute_script("return document.images[0].naturalWidth") > 0


def test_a_broken_image_and_a_console_error_are_both_reported(tmp_path: Path) -> None:
    good = png_data_uri()
    url = page(tmp_path / "bad.html",
               f"<img alt='fine' src='{good}'><img alt='gone' src='missing-figure.png'>"
               "<script>console.error('report failed: boom')</script>")
    with chromium() as driver:
        problems = page_problems(driver, url)
        # A clean page read with the same browser afterwards is clean: the log is per page.
        assert page_problems(driver, page(tmp_path / "after.html", "<p>ok</p>")) == []
    consoles = [p for p in problems if p.startswith("console:")]
    images = [p for p in problems if p.startswith("image not rendered:")]
    assert any("report failed: boom" in p for p in consoles), problems
    assert len(images) == 1 and images[0].endswith("missing-figure.png"), problems
    assert not any(good[:40] in p for p in problems), "the good image must not be reported"
