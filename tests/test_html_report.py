"""`pyica report`: one self-contained HTML page of score files and eval results (issue 23)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from pyica.cli import main
from pyica.html_report import build_report, is_eval_results, spearman
from pyica.scoring import ScoreRecord
from pyica.writers import ScoreWriter

SRC = Path(__file__).resolve().parents[1] / "src"
EVIL = 'x<script>alert(1)</script>"&y'


class Page(HTMLParser):
    """The parts of a report a test looks at."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self._in_script = False
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts.append(data)
        self.text.append(data)

    def find(self, tag: str, css: str | None = None) -> list[dict]:
        return [a for t, a in self.tags if t == tag and (css is None or css in (a.get("class") or "").split())]


def _images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i}.png"
        Image.new("RGB", (40 + i, 30), (20 * i % 256, 100, 200)).save(path)
        paths.append(path)
    return paths


def _score_file(path: Path, rows: list[tuple[str, float | None, str | None]], model: str = "entropy") -> Path:
    writer = ScoreWriter(path)
    writer.write([ScoreRecord(p, model, s, e) for p, s, e in rows])
    writer.close()
    return path


def _report(tmp_path: Path, *inputs: Path, **kwargs) -> tuple[Page, str]:
    out = tmp_path / "report.html"
    build_report(inputs, out, overwrite=True, **kwargs)
    text = out.read_text(encoding="utf-8")
    return Page(text), text


def test_gallery_thumbnails_in_score_order_with_errors_listed(tmp_path):
    images = _images(tmp_path / "imgs", 4)
    scores = [2.0, 5.0, 1.0, 3.5]
    rows = [(str(p), s, None) for p, s in zip(images, scores)]
    rows.append((str(tmp_path / "imgs" / "gone.png"), None, "file not found"))
    rows.append((str(tmp_path / "imgs" / "stale.png"), 0.5, None))  # scored, but the image is gone now
    page, text = _report(tmp_path, _score_file(tmp_path / "s.csv", rows))
    thumbs = page.find("img", "thumb")
    assert len(thumbs) == 4 and all(t["src"].startswith("data:image/jpeg;base64,") for t in thumbs)
    cards = page.find("li")
    assert [float(c["data-score"]) for c in cards] == [5.0, 3.5, 2.0, 1.0, 0.5]  # descending; the error row is not a card
    assert [t["alt"] for t in thumbs] == [str(images[i]) for i in (1, 3, 0, 2)]
    assert [c["data-path"] for c in cards[:3]] == [str(images[i]) for i in (1, 3, 0)]
    assert "image not readable" in text  # the stale path: a placeholder, not a crash
    errors = page.find("tr", "error-row")
    assert len(errors) == 1 and "file not found" in text
    assert page.find("svg", "hist")
    assert not page.find("figure", "scatter")  # one series: no scatter
    # offline: no external reference anywhere
    assert "http://" not in text and "https://" not in text and "src=\"//" not in text
    for attrs in page.find("img"):
        assert attrs["src"].startswith("data:")
    asc, _ = _report(tmp_path, tmp_path / "s.csv", order="asc")
    assert [float(c["data-score"]) for c in asc.find("li")] == [0.5, 1.0, 2.0, 3.5, 5.0]


def test_every_string_from_the_files_is_escaped(tmp_path):
    folder = tmp_path / EVIL
    image = _images(folder, 1)[0]
    scores = _score_file(tmp_path / "s.jsonl", [(str(image), 1.0, None), (str(folder / "b.png"), None, EVIL)],
                         model=EVIL)
    out = tmp_path / "r.html"
    build_report([scores], out, title=EVIL)
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    assert "<script>alert(1)</script>" not in text
    assert len(page.find("script")) == 1 and "alert" not in "".join(page.scripts)  # only the page's own script
    assert EVIL in "".join(page.text)  # shown, as text
    assert page.find("li")[0]["data-path"] == str(image)  # attributes round-trip through escaping
    assert len(page.find("img", "thumb")) == 1  # the odd folder name did not stop the thumbnail


def test_two_files_give_a_scatter_with_their_srcc(tmp_path):
    images = _images(tmp_path / "imgs", 5)
    a = _score_file(tmp_path / "a.csv", [(str(p), float(i), None) for i, p in enumerate(images)], model="entropy")
    b = _score_file(tmp_path / "b.tsv", [(str(p), float(i) ** 2, None) for i, p in enumerate(images[1:], 1)],
                    model="edge_density")
    page, text = _report(tmp_path, a, b)
    scatters = page.find("figure", "scatter")
    assert len(scatters) == 1 and float(scatters[0]["data-srcc"]) == pytest.approx(1.0)
    assert "SRCC = 1.000" in text and "n = 4" in text
    assert len(page.find("img", "thumb")) == 5  # the gallery is of the first file
    assert "edge_density: 16" in "".join(page.text)  # the other file's score on each card


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    x = [1.0, 2.0, 2.0, 5.0, 3.0, 9.0, 0.5]
    y = [3.0, 1.0, 4.0, 4.0, 5.0, 9.0, 2.0]
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])
    assert math.isnan(spearman([1.0], [2.0])) and math.isnan(spearman([1.0, 1.0], [1.0, 2.0]))


def test_thumbnails_are_capped_at_the_two_ends_and_the_page_says_so(tmp_path):
    images = _images(tmp_path / "imgs", 7)
    scores = _score_file(tmp_path / "s.csv", [(str(p), float(i), None) for i, p in enumerate(images)])
    page, text = _report(tmp_path, scores, max_images=3, max_rows=5)
    cards = page.find("li")
    assert [float(c["data-score"]) for c in cards] == [6.0, 5.0, 4.0, 1.0, 0.0]
    with_thumb = [c for c in cards if "nothumb" not in c["class"]]
    assert [float(c["data-score"]) for c in with_thumb] == [6.0, 5.0, 0.0]
    assert len(page.find("img", "thumb")) == 3
    assert "--max-images 3" in text and "2 of 7 scored images are not listed" in text


def test_eval_results_render_a_metrics_table(tmp_path):
    from pyica.reports import LEGACY_RESULT_COLUMNS, RESULT_COLUMNS, is_results_header, write_results_csv

    assert is_eval_results(RESULT_COLUMNS) and is_eval_results(LEGACY_RESULT_COLUMNS)
    assert is_results_header(RESULT_COLUMNS)  # the detection here agrees with the reports module's
    assert not is_eval_results(["path", "model", "score", "error"])
    base = {c: 0.5 for c in RESULT_COLUMNS}
    base.update(model="entropy", dataset="savoias", protocol="all", split="0", n=10, mapping="logistic4",
                in_sample=False, srcc=0.8125)
    rows = [dict(base, category="pooled"), dict(base, category=EVIL, srcc=0.25), dict(base, category="category_mean")]
    results = tmp_path / "results.csv"
    write_results_csv(rows, results)
    page, text = _report(tmp_path, results)
    tables = page.find("table", "metrics")
    assert len(tables) == 2 and page.find("table", "per-category")
    assert "0.812" in text and "0.250" in text and "<script>alert" not in text
    assert not page.find("ul")  # no gallery without score files


def test_maps_are_shown_beside_their_images(tmp_path):
    from pyica.maps import map_paths

    images = _images(tmp_path / "imgs" / "sub", 2)
    scores = _score_file(tmp_path / "s.csv", [(str(p), float(i), None) for i, p in enumerate(images)])
    maps = tmp_path / "maps"
    png, _ = map_paths(maps, images[0], tmp_path / "imgs")  # mirrored under a root
    png.parent.mkdir(parents=True)
    Image.new("RGB", (40, 30), (255, 0, 0)).save(png)
    flat, _ = map_paths(maps, images[1])  # flat, hashed name
    Image.new("RGB", (41, 30), (0, 255, 0)).save(flat)
    page, _ = _report(tmp_path, scores, maps=maps)
    assert len(page.find("img", "map")) == 2


def test_the_cli_and_its_refusals(tmp_path, capsys):
    images = _images(tmp_path / "imgs", 3)
    scores = tmp_path / "s.csv"
    assert main(["score", *map(str, images), "-m", "entropy", "--workers", "0", "-q", "-o", str(scores)]) == 0
    out = tmp_path / "r.html"
    assert main(["report", str(scores), "-o", str(out)]) == 0
    assert len(Page(out.read_text(encoding="utf-8")).find("img", "thumb")) == 3
    before = out.read_bytes()
    capsys.readouterr()
    for argv, says in [
        (["report", str(scores), "-o", str(out)], "--overwrite"),  # exists
        (["report", str(scores), "-o", str(scores), "--overwrite"], "also an input"),
        (["report", str(scores), "-o", str(tmp_path)], "is a folder"),
        (["report", str(tmp_path / "none.csv"), "-o", str(tmp_path / "x.html")], "not found"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err, err
    assert out.read_bytes() == before and scores.read_text().startswith("path")
    assert not list(tmp_path.glob(".*.html*"))  # no temporary file left
    assert main(["report", str(scores), "-o", str(out), "--overwrite"]) == 0


def test_report_imports_no_torch(tmp_path):
    images = _images(tmp_path / "imgs", 2)
    scores = _score_file(tmp_path / "s.csv", [(str(p), float(i), None) for i, p in enumerate(images)])
    code = (f"from pyica.cli import main\nassert main(['report', {str(scores)!r}, '-o', {str(tmp_path / 'r.html')!r}]) == 0\n"
            "import sys, json\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(SRC)})
    assert result.returncode == 0, result.stderr
    imported = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert not imported & {"torch", "torchvision", "scipy", "matplotlib", "pandas", "transformers"}


def test_the_page_renders_in_a_headless_browser(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on this machine")
    images = _images(tmp_path / "imgs", 3)
    scores = _score_file(tmp_path / "s.csv", [(str(p), float(i), None) for i, p in enumerate(images)])
    out = tmp_path / "r.html"
    build_report([scores], out)
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=800,600", out.as_uri()], capture_output=True, timeout=120, check=False)
    assert shot.is_file()
    with Image.open(shot) as picture:
        low, high = picture.convert("L").getextrema()
    assert high - low > 50  # not blank


def test_in_page_filter_and_sort_script_in_node(tmp_path):
    """The page's inline script, run by Node against a minimal stand-in for the DOM it uses: re-sorting
    orders the cards by score, the filter hides cards whose path lacks the text (skips without Node)."""
    import json
    import subprocess

    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("no node on this machine")
    from pyica.html_report import _SCRIPT

    cards = [{"path": "/a/cat.jpg", "score": "0.2"}, {"path": "/a/dog.jpg", "score": "0.9"},
             {"path": "/b/Cat2.JPG", "score": "0.5"}]
    harness = """
var cards = %s.map(function (c) { return {hidden: false, attrs: {'data-path': c.path, 'data-score': c.score},
  getAttribute: function (k) { return this.attrs[k]; }}; });
var gallery = {children: cards.slice(), order: [], appendChild: function (c) { this.order.push(c); }};
function control(value) { return {value: value, handlers: {}, addEventListener: function (e, f) { this.handlers[e] = f; }}; }
var els = {gallery: gallery, controls: {hidden: true}, filter: control(''), order: control('desc')};
var document = {getElementById: function (id) { return els[id]; }};
%s
var out = {};
els.order.value = 'asc'; gallery.order = []; els.order.handlers.change();
out.asc = gallery.order.map(function (c) { return c.attrs['data-path']; });
els.filter.value = 'CAT'; gallery.order = []; els.filter.handlers.input();
out.shown = gallery.order.filter(function (c) { return !c.hidden; }).map(function (c) { return c.attrs['data-path']; });
out.controls = !els.controls.hidden;
console.log(JSON.stringify(out));
""" % (json.dumps(cards), _SCRIPT)
    script = tmp_path / "harness.js"
    script.write_text(harness)
    done = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["controls"] is True
    assert out["asc"] == ["/a/cat.jpg", "/b/Cat2.JPG", "/a/dog.jpg"]
    assert out["shown"] == ["/a/cat.jpg", "/b/Cat2.JPG"]  # case-insensitive
