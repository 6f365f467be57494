"""A local image-enhancement service for the tests: a tornado server on 127.0.0.1 that takes
jobs as sheda_rt/enhancement/client.py sends them and calls our webhook, signed, as a real
service would.

  POST /jobs               X-API-Key: <key>; multipart: image (file), job_id, callback_url?
                           -> 202 {"id": "svc-<n>"}; 401 {"error"} with another key (`hold_jobs`, `refuse_jobs`:
                           slow to answer, or refusing)
  GET  /results/<name>     a result the test put there (`put_result`), with its Content-Type
                           (`hold_results`, `result_status`, `dribble`: held, failing or slow)

`auto_complete` (on by default): right after answering a job, it brightens the image, serves
it under /results/ and delivers `{"job_id", "status": "completed", "result_url"}` to
`webhook_url`. Off, the test plays the service itself with `deliver()` and `body_for()`.
"""
from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import io
import itertools
import json
import time
import uuid

import tornado.httpserver
import tornado.httputil
import tornado.netutil
import tornado.web
from PIL import Image, ImageEnhance
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

API_KEY = "enh-test-key-" + "k" * 20
SECRET = "enh-webhook-secret-" + "s" * 24

_ids = itertools.count(1)


def sign(body: bytes, timestamp: str, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def brighter_png(data: bytes, factor: float = 1.6) -> bytes:
    """What this 'AI' does: a brighter copy, twice the size, as PNG."""
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        img = ImageEnhance.Brightness(img).enhance(factor).resize((img.width * 2, img.height * 2))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


class _Jobs(tornado.web.RequestHandler):
    def initialize(self, service):
        self.service = service

    async def post(self):
        self.service.job_headers.append(dict(self.request.headers))
        if self.request.headers.get("X-API-Key") != self.service.api_key:
            self.set_status(401)
            return self.finish({"error": "bad api key"})
        if self.service.hold_jobs is not None:  # a slow service: the test decides when it answers
            await self.service.hold_jobs.wait()
        if self.service.refuse_jobs is not None:
            self.set_status(self.service.refuse_jobs)
            return self.finish({"error": "refused"})
        fields: dict = {}
        files: dict = {}
        tornado.httputil.parse_body_arguments(self.request.headers["Content-Type"], self.request.body, fields, files)
        job = {"job_id": int(fields["job_id"][0]), "callback_url": fields.get("callback_url", [b""])[0].decode() or None,
               "image": files["image"][0]["body"], "filename": files["image"][0]["filename"],
               "content_type": files["image"][0]["content_type"], "id": f"svc-{next(_ids)}"}
        self.service.jobs.append(job)
        self.set_status(202)
        self.finish({"id": job["id"]})
        if self.service.auto_complete:
            self.service.background.append(asyncio.ensure_future(self.service.complete(job["job_id"])))


class _Results(tornado.web.RequestHandler):
    def initialize(self, service):
        self.service = service

    async def get(self, name):
        self.service.fetches.append(name)
        if self.service.hold_results is not None:  # the test decides when the download may go on
            await self.service.hold_results.wait()
        if self.service.result_status is not None:
            self.set_status(self.service.result_status)
            if self.service.redirect_to:
                self.set_header("Location", self.service.redirect_to)
            return self.finish("unavailable")
        found = self.service.results.get(name)
        if found is None:
            self.set_status(404)
            return self.finish("not found")
        body, content_type = found
        self.set_header("Content-Type", content_type)
        if self.service.gzip_results:  # whatever the request's Accept-Encoding says
            body = gzip.compress(body)
            self.set_header("Content-Encoding", "gzip")
        if self.service.stall_after is not None:  # chunked: this many bytes, then nothing until the test says so
            self.write(body[:self.service.stall_after])
            await self.flush()
            await self.service.stall.wait()
            return self.finish(body[self.service.stall_after:])
        if self.service.dribble is None:
            return self.finish(body)
        for i in range(0, len(body), 16):  # a slow (or hostile) host: 16 bytes at a time
            self.write(body[i:i + 16])
            await self.flush()
            await asyncio.sleep(self.service.dribble)
        self.finish()


class LocalEnhancer:
    def __init__(self, api_key: str = API_KEY, secret: str = SECRET):
        self.api_key = api_key
        self.secret = secret
        self.jobs: list[dict] = []
        self.job_headers: list[dict] = []
        self.results: dict[str, tuple[bytes, str]] = {}
        self.fetches: list[str] = []
        self.deliveries: list[tuple[int, bytes]] = []  # (our answer's status, its body)
        self.background: list = []
        self.auto_complete = True
        self.refuse_jobs: int | None = None  # a status to answer POST /jobs with instead of taking the job
        self.hold_jobs: asyncio.Event | None = None  # set: POST /jobs waits for it before answering
        self.hold_results: asyncio.Event | None = None  # set: GET /results/ waits for it before answering
        self.result_status: int | None = None  # a status to answer GET /results/ with instead of the file
        self.redirect_to: str | None = None  # with result_status 3xx: the Location sent
        self.gzip_results = False  # send results gzip-encoded
        self.stall_after: int | None = None  # send this many bytes of a result, then wait for `stall`
        self.stall = asyncio.Event()
        self.dribble: float | None = None  # seconds between 16-byte pieces of a result (None: all at once)
        self.webhook_url: str | None = None
        self.base_url = ""
        self._http: tornado.httpserver.HTTPServer | None = None

    def start(self) -> str:
        app = tornado.web.Application([
            (r"/jobs", _Jobs, {"service": self}),
            (r"/results/([^/]+)", _Results, {"service": self}),
        ])
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self._http = tornado.httpserver.HTTPServer(app)
        self._http.add_sockets(sockets)
        self.base_url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        return self.base_url

    def stop(self) -> None:
        for task in self.background:
            task.cancel()
        if self._http is not None:
            self._http.stop()

    @property
    def jobs_url(self) -> str:
        return self.base_url + "/jobs"

    def job(self, job_id: int) -> dict:
        return next(j for j in self.jobs if j["job_id"] == job_id)

    def put_result(self, body: bytes, content_type: str = "image/png") -> str:
        name = uuid.uuid4().hex + ".png"
        self.results[name] = (body, content_type)
        return f"{self.base_url}/results/{name}"

    # ---- webhooks ------------------------------------------------------------------
    @staticmethod
    def body_for(job_id: int, status: str = "completed", **fields) -> bytes:
        return json.dumps({"job_id": job_id, "status": status, **fields}).encode()

    async def deliver(self, body: bytes, *, timestamp: str | None = None, delivery_id: str | None = None,
                      signature: str | None = None, secret: str | None = None, drop: tuple = (), url: str | None = None):
        """POST a webhook to our server (or `url`): signed with the shared secret over '<timestamp>.<body>'
        unless told otherwise; `drop` names headers to leave out."""
        timestamp = str(int(time.time())) if timestamp is None else timestamp
        headers = {"Content-Type": "application/json", "X-Timestamp": timestamp,
                   "X-Delivery-Id": delivery_id or f"dlv-{uuid.uuid4().hex}",
                   "X-Signature": signature if signature is not None else sign(body, timestamp, secret or self.secret)}
        for name in drop:
            headers.pop(name, None)
        req = HTTPRequest(url or self.webhook_url, method="POST", body=body, headers=headers, request_timeout=30)
        resp = await AsyncHTTPClient().fetch(req, raise_error=False)
        self.deliveries.append((resp.code, resp.body))
        return resp

    async def complete(self, job_id: int):
        """The service finishing a job: the enhanced image served here, then the signed webhook."""
        url = self.put_result(brighter_png(self.job(job_id)["image"]))
        return await self.deliver(self.body_for(job_id, result_url=url))
