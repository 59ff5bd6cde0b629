"""report.html of real tiny studies, opened in headless Chromium: the leaderboard, the links back to the run
records, every figure and thumbnail decoded, the best run's mistakes, multi-label, and older records."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from transferlab.leaderboard import leaderboard
from transferlab.report import build_report, load_records


@pytest.fixture(scope="module")
def single_label(finished_study):
    """The shared finished study (conftest): knn, linear, pixels and a 3-epoch CNN × 2 seeds + reference rows."""
    return finished_study[0]


@pytest.fixture(scope="module")
def multi_label(multilabel_study):
    """The shared multi-label study on Fashion-MNIST mosaics (some with no label), per-class thresholds."""
    return multilabel_study[0]


# ------------------------------------------------------------------------------------------------ helpers

class Rows(HTMLParser):
    """Every <tr> of a page: its attributes, the hrefs inside it and its text."""

    def __init__(self):
        super().__init__()
        self.rows: list[dict] = []
        self.images: list[str] = []
        self.open: dict | None = None  # the <tr> being read

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr":
            self.open = {"attrs": attrs, "hrefs": [], "text": ""}
            self.rows.append(self.open)
        elif tag == "a" and self.open:
            self.open["hrefs"].append(attrs.get("href", ""))
        elif tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag in ("tr", "table"):
            self.open = None

    def handle_data(self, data):
        if self.open:
            self.open["text"] += data

    def with_class(self, name: str) -> list[dict]:
        return [r for r in self.rows if name in r["attrs"].get("class", "").split()]


def parsed(html: str) -> Rows:
    parser = Rows()
    parser.feed(html)
    return parser


def rendered(report: Path, tmp_path: Path) -> str:
    """The page as Chromium leaves it after loading (the DOM, after the report's own image check ran)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium); the rendering check needs it")
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'chromium'}",
         "--virtual-time-budget=5000", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert "<body" in result.stdout, result.stderr[-2000:]
    return result.stdout


def images_decoded(dom: str) -> tuple[int, int]:
    """(images that decoded, images on the page), as the report's inline check counted them."""
    body = re.search(r"<body[^>]*>", dom).group(0)
    ok, total = (re.search(rf'{name}="(\d+)"', body) for name in ("data-images-ok", "data-images-total"))
    assert ok and total, f"the report's image check did not run: {body}"
    return int(ok.group(1)), int(total.group(1))


# -------------------------------------------------------------------------------------------------- tests

def test_leaderboard_renders_in_chromium_with_every_image_decoded(single_label, tmp_path):
    records = load_records(single_label)
    rows = leaderboard(records)
    dom = rendered(build_report(single_label), tmp_path)
    ok, total = images_decoded(dom)
    assert ok == total > 0
    shown = parsed(dom).with_class("lb-row")
    assert len(shown) == len(rows) == 6  # knn, linear, pixels, cnn; majority and untrained (reference rows)
    for row, tr in zip(rows, shown, strict=True):
        assert row["paradigm"] in tr["text"] and f"{row['accuracy_mean']:.3f}" in tr["text"]
    majority = next(tr for tr in shown if "majority" in tr["text"])
    assert "ref" in majority["attrs"]["class"] and "reference · majority" in majority["text"]
    assert len(parsed(dom).with_class("top")) == 1  # the best non-reference row, highlighted


def test_every_leaderboard_row_links_to_its_runs_and_every_run_to_its_record(single_label):
    html = build_report(single_label).read_text()
    page = parsed(html)
    run_rows = {r["attrs"]["id"]: r for r in page.rows if r["attrs"].get("id", "").startswith("run-")}
    records = load_records(single_label)
    assert len(run_rows) == len(records)
    for row, tr in zip(leaderboard(records), page.with_class("lb-row"), strict=True):
        targets = [h.removeprefix("#") for h in tr["hrefs"] if h.startswith("#run-")]
        assert targets == [f"run-{i}" for i in row["run_ids"]]
        assert all(t in run_rows for t in targets)
    for anchor, tr in run_rows.items():
        (href,) = [h for h in tr["hrefs"] if h.startswith("runs/")]
        record = single_label / href
        assert record.is_file() and json.loads(record.read_text())["run_id"] == anchor.removeprefix("run-")


def test_report_is_one_self_contained_file_with_every_section(single_label):
    html = build_report(single_label).read_text()
    page = parsed(html)
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html) and "<link" not in html
    assert "<script src" not in html
    for section in ("Leaderboard", "Best vs runner-up", "Score vs cost", "Learning curves", "Best run of each dataset",
                    "Per class", "Mistakes on test", "Data", "Runs", "Environment"):
        assert f">{section}<" in html, section
    assert re.search(r"(beats|ties with|trails) .+ (by \d\.\d{3} |on )accuracy \(95 % CI \[-?\d\.\d{3}, "
                     r"-?\d\.\d{3}\], paired bootstrap over the 60 test images; "
                     r"better in \d+\.\d % of \d+ resamples", html)
    assert "torch_threads" in html and "scikit-learn" in html


def test_best_run_shows_its_confusions_and_mistakes_with_thumbnails(single_label, tmp_path):
    """The report of the CNN runs that made mistakes alone (the frozen-feature rows make none on these 3 easy
    classes, and neither may every CNN seed)."""
    study = tmp_path / "cnn-only"
    (study / "runs").mkdir(parents=True)
    for path in (single_label / "runs").glob("*__cnn__*.json"):
        if json.loads(path.read_text())["examples"]:
            shutil.copy(path, study / "runs")
    report = build_report(study)
    best = max(load_records(study), key=lambda r: r["val_metrics"]["accuracy"])  # chosen on validation
    assert best["examples"] and best["metrics"]["most_confused"]
    html = report.read_text()
    gallery = html.split('class="gallery"', 1)[1].split("</div>", 1)[0]
    assert gallery.count("<figure>") == len(best["examples"])
    first = best["examples"][0]
    assert f"#{first['index']}" in gallery and first["true"] in gallery and f"({first['confidence']:.2f})" in gallery
    pairs = html.split(">Most confused pairs<", 1)[1].split("</table>", 1)[0]
    pair = best["metrics"]["most_confused"][0]
    in_pair = [e for e in best["examples"] if (e["true"], e["predicted"]) == (pair["true"], pair["predicted"])]
    assert pairs.count('<img src="data:image/png') >= min(len(in_pair), 1)
    ok, total = images_decoded(rendered(report, tmp_path))
    assert ok == total >= 5 + len(best["examples"])  # cost, curves, confusion, F1 bars, counts + thumbnails


def test_multi_label_report_shows_thresholds_label_sets_and_no_confusion_matrix(multi_label, tmp_path):
    records = load_records(multi_label)
    assert records[0]["task"] == "multi-label"
    report = build_report(multi_label)
    html = report.read_text()
    header = parsed(html).rows[0]["text"]
    assert all(m in header for m in ("micro_f1", "macro_f1", "mAP"))
    assert "one threshold per class, chosen on validation" in html
    assert "<th>AP</th>" in html and "<th>threshold</th>" in html
    assert "confusion matrix" not in html and ">Most confused pairs<" not in html
    assert "reference · all-negative" in html
    best = next(r for r in records if r["run_id"] in html.split(">Best run of each dataset<")[1].split("</h3>")[0])
    example = best["examples"][0]  # the best run still gets some mosaics wrong
    assert "{" + ", ".join(example["true"]) + "}" in html or "∅ (no label)" in html
    ok, total = images_decoded(rendered(report, tmp_path))
    assert ok == total > 0


def test_records_of_the_previous_format_still_render(single_label, tmp_path):
    """Version-2 records had no task, reference, cost, examples, class counts, environment or pair list."""
    study = tmp_path / "old"
    (study / "runs").mkdir(parents=True)
    for record in load_records(single_label):
        for key in ("task", "reference", "cost", "examples", "class_counts", "environment", "thresholds", "final",
                    "test_outcomes"):
            record.pop(key, None)
        for key in ("confusion_normalized", "most_confused"):
            record["metrics"].pop(key, None)
        (study / "runs" / f"{record['run_id']}.json").write_text(json.dumps(record))
    html = build_report(study).read_text()
    assert len(parsed(html).with_class("lb-row")) == 6 and ">Learning curves<" in html
    assert "The record keeps no example images" in html


def test_a_trained_row_below_its_backbones_linear_probe_is_flagged_with_what_to_try():
    from transferlab.report.html import below_linear_probe

    def record(run_id, paradigm, engine, bn=None):
        return {"run_id": run_id, "spec": {"paradigm": {"name": paradigm}}, "backbone": {"engine": engine},
                "selected": {"batchnorm": {"policy": bn}} if bn else {}}

    by_id = {r["run_id"]: r for r in [
        record("lin", "linear", "onnx"), record("ft", "finetune", "torch (training)", bn="train"),
        record("ft2", "finetune", "torch (training)", bn="frozen"), record("sc", "scratch", "torch (training)"),
        record("hd", "head", "torch (training)"), record("ft-b", "finetune", "torch (training)"),
        record("unt", "linear", "onnx")]}
    rows = [{"backbone": "b", "run_ids": ["lin"], "accuracy_mean": 0.89},
            {"backbone": "b", "run_ids": ["ft"], "accuracy_mean": 0.52},
            {"backbone": "b", "run_ids": ["ft2"], "accuracy_mean": 0.88},
            {"backbone": "b", "run_ids": ["sc"], "accuracy_mean": 0.30},  # from scratch: expected below
            {"backbone": "b", "run_ids": ["hd"], "accuracy_mean": 0.91},  # above: fine
            {"backbone": "other", "run_ids": ["ft-b"], "accuracy_mean": 0.10},  # no probe on its backbone
            {"backbone": "b (random init)", "run_ids": ["unt"], "accuracy_mean": 0.5, "reference": "untrained"}]
    warnings = below_linear_probe(rows, by_id, "accuracy")
    assert [w is not None for w in warnings] == [False, True, True, False, False, False, False]
    assert warnings[1].startswith("below the frozen linear probe on this backbone (0.520 < 0.890)")
    assert "BatchNorm statistics on small data (they trained here)" in warnings[1] and "bn: frozen" in warnings[1]
    assert "(they trained here)" not in warnings[2]


HOSTILE_LABELS = ["<script>document.body.dataset.pwned='script'</script>alert(1)",
                  "R&D <b>x</b>", "<img src=x onerror=\"document.body.dataset.pwned='img'\">", "it's \"quoted\""]


@pytest.fixture(scope="module")
def hostile_manifest(image_folder, tmp_path_factory):
    """A manifest of real Fashion-MNIST PNGs whose labels are markup, ampersands and quotes."""
    import csv

    root = tmp_path_factory.mktemp("hostile")
    files = sorted(image_folder[0].rglob("*.png"))[:120]
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for i, path in enumerate(files):
            shutil.copy(path, root / f"{i:03d}.png")
            writer.writerow([f"{i:03d}.png", HOSTILE_LABELS[i % len(HOSTILE_LABELS)]])
    return root / "labels.csv"


def test_labels_are_text_in_the_report_and_the_inspect_page_never_markup(hostile_manifest, tmp_path):
    """Class names from a user's manifest cannot inject markup or script: in Chromium nothing they carry runs,
    and each shows as the text it is."""
    import transferlab
    from transferlab import api

    out = tmp_path / "study"
    transferlab.study({"name": "hostile", "datasets": [{"source": str(hostile_manifest), "name": "hostile"}],
                       "paradigms": ["pixels"], "seeds": [0]}, out)
    api.inspect(str(hostile_manifest), out=tmp_path / "inspect", augment=())
    for page in (out / "report.html", tmp_path / "inspect" / "inspect.html"):
        html = page.read_text()
        assert "<script>document" not in html and "<b>x</b>" not in html and "<img src=x" not in html
        dom = rendered(page, tmp_path / page.stem)
        body = re.search(r"<body[^>]*>", dom).group(0)
        assert "pwned" not in body, (page.name, body)  # neither the script nor the onerror handler ran
        text = re.sub(r"<[^>]+>", "", dom)
        text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")
        for label in HOSTILE_LABELS:
            assert label in text, (page.name, label)  # shown as text, exactly


def test_the_best_run_the_winner_and_the_comparison_follow_validation_not_test(single_label, tmp_path):
    """Validation made to disagree with test: the row worst on test gets the best validation scores, and within
    it the seed worse on test the better validation score. compare_best, winners and the report's best run
    all follow validation."""
    from transferlab.leaderboard import GROUP, compare_best, winners

    study = shutil.copytree(single_label, tmp_path / "study")
    records = load_records(study)
    rows = [r for r in leaderboard(records) if not r["reference"]]
    worst_on_test = rows[-1]
    key = tuple(worst_on_test[k] for k in GROUP)
    chosen = [r for r in records if tuple(r["labels"][k] for k in GROUP) == key]
    worse_seed = min(chosen, key=lambda r: (r["metrics"]["accuracy"], r["seed"]))
    for path in (study / "runs").glob("*.json"):
        record = json.loads(path.read_text())
        if record.get("reference"):
            continue
        mine = tuple(record["labels"][k] for k in GROUP) == key
        record["val_metrics"]["accuracy"] = (0.99 if record["run_id"] == worse_seed["run_id"] else 0.98) if mine \
            else 0.5
        path.write_text(json.dumps(record))
    records = load_records(study)
    (winner,) = winners(records)
    assert tuple(winner["labels"][k] for k in GROUP) == key
    (comparison,) = compare_best(records).values()
    assert tuple(comparison["a"][k] for k in GROUP) == key
    html = build_report(study).read_text()
    best = re.search(r'<h2 id="best">.*?<code>([^<]+)</code>', html, re.S).group(1)
    assert best == worse_seed["run_id"]
