"""`transferlab serve RUN`: a run's model behind a small HTTP service (FastAPI on uvicorn).

- `POST /predict` takes one image as the multipart field `file` (optional query `top_k`) and answers the
  top-k classes as JSON (multi-label: also the labels above the run's tuned thresholds), decoded and
  preprocessed exactly as `transferlab predict` does (`open_image`, then the run's view).
- `GET /` is a page where a person drops or picks an image and sees the prediction; everything on it is
  inline (no CDN: the service must work offline). `GET /health` answers {"status": "ok", "run_id"}.

Bad input is the client's problem, never the service's: an unreadable upload → 400 naming the reason, an
upload over `max_upload_mb` → 413, refused from its Content-Length before any body is read, and otherwise
counted while the body streams in. Memory is bounded: the upload stays in starlette's spooled file (on disk
past 1 MB) and PIL reads it from there, only web image formats are decoded (JPEG, PNG, WebP, BMP, GIF, TIFF:
never EPS, which would run Ghostscript), an image over `max_pixels` is refused from its header, decodes run
at most one per core, and uvicorn refuses connections over `limit_concurrency` (503). A request whose body
stalls for REQUEST_TIMEOUT seconds gets 408; idle keep-alive connections close after KEEP_ALIVE seconds. The
Host header must name the address the service is bound to (DNS rebinding: a web page cannot make a browser
talk to a loopback service under another name).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Annotated, Any

import jinja2
import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from starlette.datastructures import UploadFile
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ..core.errors import TransferlabError
from ..data.images import UnreadableImage, open_image
from .artifact import DEFAULT_RUNS, RunModel, load_run
from .predict import describe

MB = 1 << 20
FORM_OVERHEAD = 64 * 1024  # multipart boundary and part headers around the one file, allowed on top of the limit
SERVE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")  # what an image upload can be
# 25 megapixels (a 6000 × 4000 camera frame) decode to 75 MB of RGB: the most one request may make the service
# hold. The training default (PIL's 89 MP, ~270 MB) is for datasets a user chose, not for strangers' uploads.
SERVE_MAX_PIXELS = 25_000_000
LIMIT_CONCURRENCY = 64  # open connections and requests; uvicorn answers 503 above it
REQUEST_TIMEOUT = 30.0  # seconds a request body may stall
KEEP_ALIVE = 5  # seconds an idle keep-alive connection stays open
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


class UploadTooLarge(Exception):
    pass


class UploadStalled(Exception):
    pass


def create_app(model: RunModel, *, max_upload_mb: float = 20, top_k: int = 5,
               max_pixels: int = SERVE_MAX_PIXELS, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The service over one loaded run; `top_k` is the default of `/predict`'s query parameter;
    `allowed_hosts`: the Host header values accepted (default: the loopback names)."""
    if not max_upload_mb > 0:
        raise TransferlabError(f"--max-upload-mb {max_upload_mb}: give a size above 0")
    if top_k < 1:
        raise TransferlabError(f"top_k {top_k}: give 1 or more")
    if max_pixels < 1:
        raise TransferlabError(f"--max-pixels {max_pixels}: give 1 or more")
    limit = int(max_upload_mb * MB)
    predictor = Predictor(model, max_pixels)
    run_id = model.record["run_id"]
    page = render_page(model, limit, top_k)
    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN, which an offline service cannot reach.
    app = FastAPI(title=f"transferlab · {run_id}", docs_url=None, redoc_url=None)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts or LOOPBACK_NAMES))

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "run_id": run_id}

    @app.post("/predict")
    async def predict(request: Request, top_k: Annotated[int, Query(ge=1)] = top_k) -> dict[str, Any]:
        async with upload_of(request, limit) as (file, name):
            # Decoding and the model are CPU-bound: off the event loop, so /health and uploads keep flowing.
            return await asyncio.get_running_loop().run_in_executor(predictor.pool, predictor.predict, file, name,
                                                                    top_k)

    return app


class Predictor:
    """An upload's file → the prediction body, on a pool of one thread per core: a decoded image may be up to
    max_pixels × 3 bytes, more decodes than cores only add memory, not speed, and decoding on the same few
    threads keeps the allocator from holding freed image buffers in one arena per thread (under the load test
    in tests/test_serve.py the service grew by 418 MB on the shared 40-thread pool, 137 MB on its own). The model call
    holds a lock: one torch call already uses every core, and the module is shared by every request."""

    def __init__(self, model: RunModel, max_pixels: int = SERVE_MAX_PIXELS):
        self.model = model
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0)), thread_name_prefix="predict")
        self.max_pixels = max_pixels

    def predict(self, file: IO[bytes], name: str, top_k: int) -> dict[str, Any]:
        try:
            image = open_image(file, max_pixels=self.max_pixels, formats=SERVE_FORMATS)
        except UnreadableImage as exc:
            reason = exc.reason.replace("raise data.max_pixels", "start the service with a larger --max-pixels")
            raise HTTPException(400, f"{name}: cannot read it as an image: {reason}") from None
        tensor = self.model.view(image)
        del image
        with self.lock:
            proba = self.model.probabilities(tensor[None])[0]
        return {"run_id": self.model.record["run_id"], "file": name, **describe(self.model, proba, top_k)}


# ---------------------------------------------------------------- reading an upload within the limit


@contextlib.asynccontextmanager
async def upload_of(request: Request, limit: int):
    """(file, name) of the multipart field `file`, read as it streams in and left in starlette's spooled file
    (PIL reads that directly: no copy of the bytes in memory); 413 over `limit`, 400 without the field, 408
    when the body stalls."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        raise too_large(limit)  # before reading a byte of the body
    # A chunked body has no length to check up front: count it as it streams into the form parser.
    counted = Request(request.scope, receive=counting_receive(request.receive, limit + FORM_OVERHEAD))
    try:
        async with counted.form(max_files=1, max_fields=20) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise HTTPException(400, "no image: send it as the multipart/form-data field 'file' "
                                         "(curl -F file=@photo.jpg …/predict)")
            if (upload.size or 0) > limit:  # the limit is on the image itself, not the form around it
                raise UploadTooLarge
            upload.file.seek(0)
            yield upload.file, upload.filename or "upload"
    except UploadTooLarge:
        raise too_large(limit) from None
    except UploadStalled:
        raise HTTPException(408, f"the upload stalled for {REQUEST_TIMEOUT:g} s; send it again") from None


def counting_receive(receive, limit: int):
    """The ASGI receive channel, raising UploadTooLarge once more than `limit` body bytes have come in and
    UploadStalled when no message comes for REQUEST_TIMEOUT seconds."""
    received = 0

    async def wrapped():
        nonlocal received
        try:
            message = await asyncio.wait_for(receive(), REQUEST_TIMEOUT)
        except TimeoutError:
            raise UploadStalled from None
        received += len(message.get("body", b""))
        if received > limit:
            raise UploadTooLarge
        return message

    return wrapped


def too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"upload too large: this service takes images up to {limit / MB:g} MB "
                              "(transferlab serve --max-upload-mb raises it)")


# ---------------------------------------------------------------- running it


def serve(ref, *, host: str = "127.0.0.1", port: int = 8000, runs=DEFAULT_RUNS, max_upload_mb: float = 20.0,
          max_pixels: int = SERVE_MAX_PIXELS, allowed_hosts: list[str] | None = None) -> None:
    """Load the run (`load_run(ref, runs)`) and serve it until Ctrl-C; prints the URL once listening."""
    model = load_run(ref, runs)
    app = create_app(model, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
                     allowed_hosts=allowed_hosts or hosts_for(host))
    sock = bind(host, port)  # bound here, not by uvicorn: a busy port becomes one line, port 0 gets its real number
    print(f"serving run {model.record['run_id']} at {url(sock)} (Ctrl-C stops)", flush=True)
    try:
        make_server(app).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on; stopping is the normal end
        pass


def hosts_for(host: str) -> list[str]:
    """The Host header values a service bound to `host` accepts: its own address, and the loopback names when
    it is on loopback; bound to every interface, any (give --allowed-host to narrow it)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return [host]  # a host name: the name itself
    if address.is_unspecified:
        return ["*"]
    if address.is_loopback:
        return [*LOOPBACK_NAMES]
    return [host, f"[{host}]"] if address.version == 6 else [host]


def make_server(app: FastAPI) -> uvicorn.Server:
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", limit_concurrency=LIMIT_CONCURRENCY,
                                           timeout_keep_alive=KEEP_ALIVE))
    logging.getLogger("uvicorn.access").setLevel(logging.INFO)  # one line per request, without the startup chatter
    return server


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise TransferlabError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
                               "or --host") from None
    sock.set_inheritable(True)
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


# ---------------------------------------------------------------- the page


def render_page(model: RunModel, limit: int, top_k: int) -> str:
    record, metrics = model.record, model.record.get("metrics") or {}
    name, value = ("micro-F1", metrics.get("micro_f1")) if model.multi_label else ("accuracy", metrics.get("accuracy"))
    config = {"top_k": top_k, "limit": limit, "limit_mb": f"{limit / MB:g}", "multi_label": model.multi_label}
    return PAGE.render(run_id=record["run_id"], labels=record.get("labels") or {}, classes=model.classes,
                       metric=name, value=value, test_images=(record.get("splits") or {}).get("test"), config=config)


PAGE = jinja2.Environment(autoescape=True).from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>transferlab · {{ run_id }}</title>
<link rel="icon" href="data:,">
<style>
  body { font: 15px/1.45 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #1d232a; }
  h1 { font-size: 1.25rem; margin-bottom: .2rem; word-break: break-all; }
  .meta { color: #5b6570; margin: .15rem 0; }
  #drop { display: block; border: 2px dashed #9aa5b1; border-radius: 10px; padding: 2rem 1rem; text-align: center;
          margin: 1.2rem 0; cursor: pointer; background: #f7f9fb; }
  #drop.over { border-color: #2f6fdb; background: #eaf1fd; }
  #drop input { display: block; margin: .8rem auto 0; }
  #answer { display: flex; gap: 1.2rem; align-items: flex-start; }
  #preview { width: 9rem; height: 9rem; object-fit: contain; border-radius: 6px; image-rendering: pixelated; }
  #preview[hidden], #answer[hidden] { display: none; }
  #prediction { font-size: 1.4rem; font-weight: 600; margin: 0 0 .6rem; }
  .row { display: grid; grid-template-columns: 9rem 1fr 4rem; gap: .5rem; align-items: center; margin: .25rem 0; }
  .name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  .track { background: #e6eaee; border-radius: 4px; height: .9rem; }
  .bar { background: #2f6fdb; border-radius: 4px; height: 100%; }
  .pct { text-align: right; font-variant-numeric: tabular-nums; }
  #status { color: #5b6570; min-height: 1.4em; }
  #status.error { color: #b3261e; font-weight: 600; }
</style></head>
<body>
<h1>{{ run_id }}</h1>
<p class="meta">{{ labels.get("paradigm", "") }}{% if labels.get("backbone") %} on {{ labels["backbone"] }}{% endif %}
  {%- if labels.get("dataset") %} · trained on {{ labels["dataset"] }}{% endif %}</p>
<p class="meta" id="metric">test {{ metric }}: {% if value is not none %}{{ "%.1f" % (value * 100) }} %
  {%- if test_images %} on {{ test_images }} images{% endif %}{% else %}not recorded{% endif %}</p>
<p class="meta" id="classes">{{ classes | length }} classes: {{ classes | join(", ") }}</p>
<label id="drop">Drop an image here, or pick one
  <input type="file" id="file" name="file" accept="image/*">
</label>
<p id="status"></p>
<div id="answer" hidden>
  <img id="preview" alt="the uploaded image" hidden>
  <div style="flex: 1"><p id="prediction"></p><div id="bars"></div></div>
</div>
<script>
const CONFIG = {{ config | tojson }};
const $ = (id) => document.getElementById(id);
const drop = $("drop"), input = $("file");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]);
});
input.addEventListener("change", () => { if (input.files.length) send(input.files[0]); });

function status(text, error) { $("status").textContent = text; $("status").className = error ? "error" : ""; }

async function send(file) {
  if (file.size > CONFIG.limit) {
    status(file.name + ": over the " + CONFIG.limit_mb + " MB upload limit", true);
    return;
  }
  status("classifying " + file.name + " …");
  const body = new FormData();
  body.append("file", file);
  try {
    const response = await fetch("predict?top_k=" + CONFIG.top_k, { method: "POST", body: body });
    const answer = await response.json().catch(() => ({ detail: response.status + " " + response.statusText }));
    const detail = typeof answer.detail === "string" ? answer.detail : JSON.stringify(answer.detail);
    if (!response.ok) throw new Error(detail);
    show(answer, file);
    status("");
  } catch (err) {
    $("answer").hidden = true;
    status(err.message, true);
  }
}

function show(answer, file) {
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("prediction").textContent = CONFIG.multi_label
    ? (answer.labels.length ? answer.labels.join(", ") : "no label above its threshold") : answer.prediction;
  const bars = $("bars");
  bars.replaceChildren();
  for (const item of answer.top) {
    const row = document.createElement("div"), name = document.createElement("span"),
          track = document.createElement("div"), bar = document.createElement("div"),
          pct = document.createElement("span");
    row.className = "row"; name.className = "name"; track.className = "track"; bar.className = "bar";
    pct.className = "pct";
    name.textContent = name.title = item.class;
    bar.style.width = (100 * item.probability).toFixed(1) + "%";
    pct.textContent = (100 * item.probability).toFixed(1) + " %";
    track.append(bar); row.append(name, track, pct); bars.append(row);
  }
  $("answer").hidden = false;
}
</script>
</body></html>
""")
