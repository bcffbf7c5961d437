"""The interactive figures draw in a real browser without network: plotly.js ships beside the pages."""

from __future__ import annotations

import re

import plotly.graph_objects as go
from browser import rendered_dom

from laid_workflows import figures_support as fs


def _figure() -> go.Figure:
    fig = go.Figure([go.Scatter(x=[1, 2, 5, 10], y=[0.9, 0.8, 0.6, 0.5], name="base"),
                     go.Scatter(x=[1, 2, 5, 10], y=[0.9, 0.85, 0.8, 0.7], name="laid")])
    fs.add_dropdown(fig, ["7B", "7B"], "")
    return fig


def test_saved_page_draws_offline_in_chromium(tmp_path):
    page = fs.save_plotly(_figure(), tmp_path, "window")
    html = page.read_text()
    assert 'src="plotly.min.js"' in html and "cdn.plot.ly" not in html and len(html) < 50_000
    assert (tmp_path / fs.PLOTLY_JS).stat().st_size > 1_000_000  # the library itself, once per folder
    dom = rendered_dom(page)
    assert dom.count('class="main-svg"') >= 1, "plotly drew no SVG"
    traces = re.findall(r'class="trace scatter[^"]*"', dom)
    assert len(traces) == 2, traces  # both lines drawn
    assert len(re.findall(r'class="point"', dom)) >= 8 or dom.count('class="js-line"') >= 2


def test_cdn_page_stays_blank_offline(tmp_path):
    """The old page (plotly.js from the CDN) draws nothing without network: what the test guards against."""
    page = tmp_path / "cdn.html"
    _figure().write_html(page, include_plotlyjs="cdn", full_html=True)
    assert 'class="main-svg"' not in rendered_dom(page)


def test_plotly_js_is_written_once_and_replaced_when_stale(tmp_path):
    js = fs.ensure_plotly_js(tmp_path)
    mtime = js.stat().st_mtime_ns
    fs.save_plotly(_figure(), tmp_path, "a")
    assert js.stat().st_mtime_ns == mtime  # unchanged: not rewritten
    js.write_text("stale")
    fs.ensure_plotly_js(tmp_path)
    assert js.stat().st_size > 1_000_000
