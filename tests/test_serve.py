"""`transferlab serve`: the real service (uvicorn on a loopback port) over a real run's model, real HTTP requests
with httpx, real Fashion-MNIST PNGs; the page driven in headless Chromium."""

from __future__ import annotations

import contextlib
import http.client
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from transferlab.core.errors import TransferlabError
from transferlab.data.images import open_image
from transferlab.deploy import load_run
from transferlab.deploy.serve import MB, bind, create_app, make_server, url

CHROMIUM = Path("/usr/bin/chromium")


@contextlib.contextmanager
def running(app):
    """The app served by uvicorn in a thread on a free loopback port; yields its base URL."""
    sock = bind("127.0.0.1", 0)
    server = make_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield url(sock).rstrip("/")
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def linear_record(finished_study):
    out, records = finished_study
    record = next(r for r in records if r["model"] is not None and r["spec"]["paradigm"]["name"] == "linear"
                  and r["seed"] == 0)
    return out, record


@pytest.fixture(scope="module")
def model(linear_record):
    out, record = linear_record
    return load_run(out / "runs" / f"{record['run_id']}.json")


@pytest.fixture(scope="module")
def service(model):
    with running(create_app(model)) as base:
        yield base


@pytest.fixture(scope="module")
def test_images(image_folder):
    return sorted(image_folder[1].glob("*/*.png"))  # class folder / file: 3 classes × 20


def direct(model, path: Path) -> np.ndarray:
    """What the model gives for the file without the service."""
    return model.probabilities(model.view(open_image(path))[None])[0]


def post(client: httpx.Client, path: Path, **params) -> httpx.Response:
    return client.post("/predict", params=params, files={"file": (path.name, path.read_bytes(), "image/png")})


def proba_by_class(body: dict) -> dict[str, float]:
    return {t["class"]: t["probability"] for t in body["top"]}


def same_probabilities(body: dict, model, proba: np.ndarray) -> bool:
    """The answer's probabilities are the direct ones (rounded to 6 decimals) for every class."""
    expected = dict(zip(model.classes, proba.tolist(), strict=True))
    return proba_by_class(body) == {c: pytest.approx(p, abs=1e-6) for c, p in expected.items()}


def test_predictions_are_the_models_own_and_mostly_right(service, model, test_images):
    sample = test_images[::5]  # 4 per class
    correct = 0
    with httpx.Client(base_url=service, timeout=30) as client:
        for path in sample:
            response = post(client, path)
            assert response.status_code == 200, response.text
            body, proba = response.json(), direct(model, path)
            assert body["prediction"] == model.classes[int(proba.argmax())]
            assert body["run_id"] == model.record["run_id"] and body["file"] == path.name
            assert len(body["top"]) == 3  # top 5 of 3 classes
            assert same_probabilities(body, model, proba)
            assert [t["probability"] for t in body["top"]] == sorted(proba_by_class(body).values(), reverse=True)
            correct += body["prediction"] == path.parent.name
        assert correct >= 0.8 * len(sample)
        assert len(post(client, sample[0], top_k=1).json()["top"]) == 1
        assert post(client, sample[0], top_k=0).status_code == 422


def test_bad_uploads_get_400_naming_the_problem_and_the_service_goes_on(service, test_images):
    png = test_images[0].read_bytes()
    text = Path(__file__).read_bytes()  # a real text file, not an image
    with httpx.Client(base_url=service, timeout=30) as client:
        for name, data, reason in [("half.png", png[: len(png) // 2], ""), ("notes.txt", text, "not an image file"),
                                   ("empty.png", b"", "not an image file")]:
            response = client.post("/predict", files={"file": (name, data)})
            assert response.status_code == 400
            detail = response.json()["detail"]
            assert detail.startswith(f"{name}: cannot read it as an image") and reason in detail
        wrong_field = {"files": {"image": ("a.png", png)}}
        raw_bytes = {"content": png, "headers": {"content-type": "image/png"}}
        for request in [wrong_field, raw_bytes, {}]:
            response = client.post("/predict", **request)
            assert response.status_code == 400 and "field 'file'" in response.json()["detail"]
        no_boundary = client.post("/predict", content=png, headers={"content-type": "multipart/form-data"})
        assert no_boundary.status_code == 400 and no_boundary.json()["detail"]
        assert post(client, test_images[0]).status_code == 200


def test_uploads_over_the_limit_get_413_and_are_not_read(service, test_images):
    png = test_images[0].read_bytes()
    big = png * (50 * MB // len(png) + 1)  # 50 MB of real PNG bytes
    with httpx.Client(base_url=service, timeout=60) as client:
        response = client.post("/predict", files={"file": ("big.png", big, "image/png")})
        assert response.status_code == 413 and "20 MB" in response.json()["detail"]
        # chunked: no Content-Length to refuse up front, so the body is counted as it streams in
        response = client.post("/predict", content=multipart_chunks("big.png", big),
                               headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"})
        assert "content-length" not in response.request.headers
        assert response.status_code == 413
        assert post(client, test_images[0]).status_code == 200
    # headers only, no body sent: the answer comes from Content-Length alone
    host, port = service.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.putrequest("POST", "/predict")
    connection.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
    connection.putheader("Content-Length", str(len(big)))
    connection.endheaders()
    assert connection.getresponse().status == 413
    connection.close()


def test_the_limit_is_on_the_file_itself(model, test_images):
    png = test_images[0].read_bytes()
    with running(create_app(model, max_upload_mb=0.01)) as base, httpx.Client(base_url=base, timeout=30) as client:
        limit = int(0.01 * MB)
        over = (png * (limit // len(png) + 1))[: limit + 1]  # one byte over: only counting the file catches it
        assert client.post("/predict", files={"file": ("over.png", over)}).status_code == 413
        assert post(client, test_images[0]).status_code == 200


BOUNDARY = "transferlab-test-boundary"


def multipart_chunks(name: str, data: bytes):
    yield (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
           "Content-Type: image/png\r\n\r\n").encode()
    for start in range(0, len(data), MB):
        yield data[start:start + MB]
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def test_concurrent_requests_each_get_their_own_answer(service, model, test_images):
    sample = test_images[::3][:16]  # all three classes
    expected = [direct(model, path) for path in sample]
    start = threading.Barrier(len(sample))

    def ask(path: Path) -> httpx.Response:
        with httpx.Client(base_url=service, timeout=60) as client:
            start.wait()  # all at once
            return post(client, path)

    with ThreadPoolExecutor(len(sample)) as pool:
        responses = list(pool.map(ask, sample))
    for path, response, proba in zip(sample, responses, expected, strict=True):
        assert response.status_code == 200
        body = response.json()
        assert body["file"] == path.name and body["prediction"] == model.classes[int(proba.argmax())]
        assert same_probabilities(body, model, proba)


def test_health_and_the_page(service, model):
    assert httpx.get(f"{service}/health").json() == {"status": "ok", "run_id": model.record["run_id"]}
    response = httpx.get(f"{service}/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert re.search(r'<input type="file"[^>]*id="file"', page)
    assert model.record["run_id"] in page and ", ".join(model.classes) in page
    assert f"test accuracy: {model.record['metrics']['accuracy'] * 100:.1f} %" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing from outside: works offline
    assert httpx.get(f"{service}/docs").status_code == 404  # FastAPI's docs page would load a CDN


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="no /usr/bin/chromium (apt-get install chromium); the page check "
                                                   "drives it headless")
def test_the_page_shows_the_prediction_of_a_picked_and_a_dropped_image(service, model, test_images, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    trouser = next(p for p in test_images if p.parent.name == "Trouser"
                   and model.classes[int(direct(model, p).argmax())] == "Trouser")
    sneaker = next(p for p in test_images if p.parent.name == "Sneaker"
                   and model.classes[int(direct(model, p).argmax())] == "Sneaker")
    notes = tmp_path / "notes.txt"
    notes.write_bytes(Path(__file__).read_bytes())
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list = []
            page.on("pageerror", lambda error: errors.append(error))
            page.goto(f"{service}/")
            page.set_input_files("#file", str(trouser))
            sync_api.expect(page.locator("#prediction")).to_have_text("Trouser", timeout=15_000)
            assert page.locator("#bars .row").count() == 3
            top = float(direct(model, trouser).max())
            assert page.locator("#bars .pct").first.inner_text() == f"{100 * top:.1f} %"
            assert page.locator("#preview").is_visible()

            drop_file(page, sneaker)
            sync_api.expect(page.locator("#prediction")).to_have_text("Sneaker", timeout=15_000)

            page.set_input_files("#file", str(notes))
            sync_api.expect(page.locator("#status")).to_contain_text("notes.txt: cannot read it as an image",
                                                                     timeout=15_000)
            assert not page.locator("#answer").is_visible()
            assert not errors
        finally:
            browser.close()


def drop_file(page, path: Path) -> None:
    """Drop a file on the page's drop zone, as dragging it from the desktop does."""
    transfer = page.evaluate_handle("""([name, bytes]) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([new Uint8Array(bytes)], name, { type: "image/png" }));
        return transfer; }""", [path.name, list(path.read_bytes())])
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})


@pytest.mark.slow  # a whole interpreter with torch and timm: ~15 s, most of it imports and shutdown
def test_serve_prints_its_url_serves_by_run_id_and_stops_on_ctrl_c(linear_record):
    out, record = linear_record
    code = f"from transferlab.deploy.serve import serve; serve({record['run_id']!r}, port=0, runs={str(out)!r})"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        line = process.stdout.readline()
        found = re.fullmatch(r"serving run (\S+) at (http://127\.0\.0\.1:\d+/) \(Ctrl-C stops\)\n", line)
        assert found, (line, process.stderr.read() if process.poll() is not None else "")
        assert found[1] == record["run_id"]
        assert httpx.get(f"{found[2]}health", timeout=10).json()["run_id"] == record["run_id"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_busy_port_and_bad_settings_are_one_line_errors(model):
    taken = bind("127.0.0.1", 0)
    try:
        with pytest.raises(TransferlabError, match=f"cannot listen on 127.0.0.1:{taken.getsockname()[1]}"):
            bind("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()
    with pytest.raises(TransferlabError, match="max-upload-mb"):
        create_app(model, max_upload_mb=0)


def png_of(width: int, height: int) -> bytes:
    """A real PNG of `width` × `height` black pixels (tiny on disk, huge decoded)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"  # PIL would hand this to Ghostscript


def test_only_web_image_formats_and_pixels_within_the_limit_are_decoded(service, test_images):
    with httpx.Client(base_url=service, timeout=30) as client:
        response = client.post("/predict", files={"file": ("page.eps", EPS)})
        assert response.status_code == 400 and "JPEG, PNG, WEBP, BMP, GIF, TIFF accepted" in response.json()["detail"]
        huge = client.post("/predict", files={"file": ("huge.png", png_of(6000, 5000))})  # 30 MP, 45 KB on disk
        assert huge.status_code == 400
        assert "over the decompression-bomb limit of 25,000,000" in huge.json()["detail"]
        assert "--max-pixels" in huge.json()["detail"]
        assert post(client, test_images[0]).status_code == 200


def test_a_host_header_other_than_the_bound_address_is_refused(service):
    """DNS rebinding: a page on evil.example that resolves its name to 127.0.0.1 reaches the loopback service
    with Host: evil.example, and is refused; the service's own names work."""
    with httpx.Client(base_url=service, timeout=30) as client:
        assert client.get("/health", headers={"host": "evil.example"}).status_code == 400
        port = service.rsplit(":", 1)[1]
        assert client.get("/health", headers={"host": f"localhost:{port}"}).status_code == 200
        assert client.get("/health").status_code == 200
    from transferlab.deploy.serve import hosts_for

    assert hosts_for("0.0.0.0") == ["*"] and hosts_for("10.1.2.3") == ["10.1.2.3"]
    assert "localhost" in hosts_for("127.0.0.1") and hosts_for("::1") == hosts_for("127.0.0.1")


def test_a_stalled_upload_gets_408(model, monkeypatch):
    from transferlab.deploy import serve as serve_module

    monkeypatch.setattr(serve_module, "REQUEST_TIMEOUT", 0.5)
    with running(create_app(model)) as base:
        host, port = base.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.putrequest("POST", "/predict")
        connection.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
        connection.putheader("Content-Length", "5000")
        connection.endheaders()
        connection.send(b"--" + BOUNDARY.encode() + b"\r\n")  # then nothing more
        assert connection.getresponse().status == 408
        connection.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def served_process(out: Path, run_id: str, **options):
    """`serve` in a process of its own (its memory measured apart from the clients'); yields (base URL, pid)."""
    code = (f"from transferlab.deploy.serve import serve; serve({run_id!r}, port=0, runs={str(out)!r}, "
            f"**{options!r})")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        found = re.fullmatch(r"serving run \S+ at (http://127\.0\.0\.1:\d+)/ \(Ctrl-C stops\)\n",
                             process.stdout.readline())
        assert found, process.stderr.read() if process.poll() is not None else "no URL printed"
        yield found[1], process.pid
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


RSS_GROWTH_BOUND_MB = 200  # 2 decodes (one per core) of a 12 MP image, 68 MB each (measured 137 MB), + slack


@pytest.mark.slow  # ~40 s: a serving interpreter of its own, 200 requests
def test_200_mixed_requests_from_8_clients_are_answered_within_bounded_memory(linear_record, test_images):
    """A bounded load test on loopback: valid, corrupt, oversized and huge-pixel uploads from 8 concurrent
    clients; each gets its own answer (200 / 400 / 413), the serving process's resident memory grows by less
    than RSS_GROWTH_BOUND_MB, and p50 / p99 latency are printed."""
    out, record = linear_record
    valid = [p.read_bytes() for p in test_images[:10]]
    oversized, huge, large = bytes(2 * MB), png_of(5100, 5000), png_of(4000, 3000)  # made once, shared
    kinds = {"valid": (200, lambda i: valid[i % len(valid)]), "corrupt": (400, lambda i: valid[0][:200]),
             "oversized": (413, lambda i: oversized), "huge": (400, lambda i: huge),
             "large": (200, lambda i: large)}  # 12 MP: decoded (36 MB of RGB) and answered
    plan = [list(kinds)[i % len(kinds)] for i in range(200)]

    def one(client, i):
        kind = plan[i]
        started = time.perf_counter()
        response = client.post("/predict", files={"file": (f"{kind}-{i}.png", kinds[kind][1](i))})
        return kind, response.status_code, time.perf_counter() - started

    with served_process(out, record["run_id"], max_upload_mb=1) as (base, pid), httpx.Client(
            base_url=base, timeout=60, limits=httpx.Limits(max_connections=8)) as client:
        assert one(client, 0)[1] == 200  # warm: the first request loads what it loads once
        baseline, peak, stop = rss_mb(pid), [], threading.Event()

        def sample():
            while not stop.is_set():
                peak.append(rss_mb(pid))
                time.sleep(0.01)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: one(client, i), range(200)))
        stop.set()
        watcher.join()
    assert all(status == kinds[kind][0] for kind, status, _ in results), \
        sorted({(kind, status) for kind, status, _ in results})
    latencies = np.array([seconds for *_, seconds in results])
    growth = max(peak) - baseline
    print(f"200 requests, 8 clients: p50 {np.percentile(latencies, 50) * 1000:.0f} ms, "
          f"p99 {np.percentile(latencies, 99) * 1000:.0f} ms, serving process RSS {baseline:.0f} MB + {growth:.0f} MB")
    assert growth < RSS_GROWTH_BOUND_MB, f"RSS grew by {growth:.0f} MB"
