"""The HTML report in a real headless Chromium: the page loads, every figure decodes, the table sorts."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from dashboards_fixtures import shared_store

from mixer_cli import main

CHROMIUM = shutil.which("chromium")
# Running as root in a container: no sandbox, no GPU, and nothing that reaches the network.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]

# Appended to a copy of the report: once every image has loaded, record what the browser decoded, then click
# the test top-1 header and record the column's order, into an element that --dump-dom prints.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(image => ({alt: image.alt, width: image.naturalWidth,
                                                      complete: image.complete}));
  const headers = [...document.querySelectorAll("#trials th")];
  const column = headers.findIndex(header => header.textContent === "test top-1");
  headers[column].click();
  const sorted = [...document.querySelectorAll("#trials tbody tr")].map(row => row.cells[column].dataset.sort);
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({images, sorted, order: headers[column].dataset.order});
  document.body.append(probe);
});
</script>"""


def chromium(profile: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments],
                          capture_output=True, text=True, timeout=120, check=True)


# CI installs chromium (.ci/run), so there a missing browser is a failure, not a skip.
@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="needs Debian's chromium package (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path_factory, tmp_path, capsys):
    uri, _ = shared_store(tmp_path_factory)
    out = tmp_path / "report"
    assert main(["report", "fractions", "--tracking-uri", uri, "--out", str(out), "--bootstrap", "40",
                 "--no-log", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)["figures"]

    probe_page = out / "probe.html"
    probe_page.write_text((out / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    dom = chromium(tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom", probe_page.as_uri()).stdout
    probe = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1).replace("&amp;", "&"))

    assert len(probe["images"]) == len(figures)
    assert all(image["complete"] and image["width"] > 300 for image in probe["images"]), probe["images"]
    finished = [float(value) for value in probe["sorted"] if value != ""]
    assert probe["order"] == "asc" and len(finished) == 8 and finished == sorted(finished)
    assert probe["sorted"][-1] == ""  # the FAILED trial logged no accuracy: it sorts last

    screenshot = tmp_path / "report.png"
    chromium(tmp_path / "profile", "--window-size=1280,2400", f"--screenshot={screenshot}",
             (out / "report.html").as_uri())
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 100_000
