"""A real browser: Debian's chromium (/usr/bin/chromium, installed by tests/run.sh),
driven by Playwright, never a downloaded browser.

- /docs renders the live OpenAPI document: every operation of /api/v1/openapi.json
  is listed, and nothing says "Unable to render".
- Two pages of a web app on an origin in CORS_ORIGINS chat through the browser's own
  WebSocket, authenticated with the `["bearer", token]` subprotocol (a page cannot
  set headers on a socket): message, ack and delivery, both ways.
- A page from an origin not in CORS_ORIGINS is refused: its socket handshake gets
  403 (the page sees close 1006, the console says why), its REST calls get no
  Access-Control-Allow-Origin (the browser blocks them: "blocked by CORS policy").

One server process and one browser for the module. The pages are served by a tiny
static server of the test's own on two loopback origins.
"""
from __future__ import annotations

import http.client
import http.server
import json
import threading

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout, sync_playwright

from tests.live_support import LiveServer, get_json
from tests.process_support import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]

# A web app's page: a chat client on the browser's native WebSocket, and fetch for REST.
APP_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>Sheda web app (test page)</title></head>
<body>
<script>
window.received = [];
window.socketEvents = [];
window.connect = (url, token) => new Promise((resolve) => {
  const ws = new WebSocket(url, ["bearer", token]);
  window.ws = ws;
  ws.onopen = () => resolve({opened: true, protocol: ws.protocol});
  ws.onmessage = (event) => window.received.push(JSON.parse(event.data));
  ws.onerror = () => window.socketEvents.push({type: "error"});
  ws.onclose = (event) => {
    window.socketEvents.push({type: "close", code: event.code, reason: event.reason, clean: event.wasClean});
    resolve({opened: false, code: event.code, reason: event.reason});
  };
});
window.sendFrame = (frame) => window.ws.send(JSON.stringify(frame));
window.api = async (url, token) => {
  try {
    const response = await fetch(url, {headers: token ? {Authorization: "Bearer " + token} : {}});
    return {status: response.status, body: await response.json()};
  } catch (error) {
    return {error: String(error)};
  }
};
</script>
</body></html>
"""


class _PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(APP_PAGE)))
        self.end_headers()
        self.wfile.write(APP_PAGE)

    def log_message(self, *args):
        pass


class PageServer:
    """The web app's origin: http://127.0.0.1:<port>."""

    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _PageHandler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def origins():
    allowed, foreign = PageServer(), PageServer()
    yield allowed, foreign
    allowed.close()
    foreign.close()


@pytest.fixture(scope="module")
def server(embedded_db, tmp_path_factory, origins):
    allowed, _ = origins
    process = LiveServer(tmp_path_factory.mktemp("browser"), embedded_db.uri, CORS_ORIGINS=allowed.origin).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def new_page(browser):
    """A page in a context of its own (its own cookies and storage: another user's browser),
    with the console kept for assertions."""
    contexts = []

    def make(url: str):
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        page.console = []
        page.on("console", lambda message: page.console.append(message.text))
        page.goto(url)
        return page

    yield make
    for context in contexts:
        context.close()


def handshake(server: LiveServer, origin: str) -> tuple[int, dict]:
    """A WebSocket upgrade request with this Origin, as a browser sends it: (status, JSON body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.process.port, timeout=10)
    try:
        conn.request("GET", "/api/v1/chat/ws", headers={
            "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13", "Origin": origin})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def ws_url(server: LiveServer) -> str:
    return server.base_url.replace("http://", "ws://") + "/api/v1/chat/ws"


def test_docs_render_every_operation_of_the_live_document(server, new_page):
    document = get_json(server.base_url + "/api/v1/openapi.json")
    expected = sorted((method.upper(), path) for path, item in document["paths"].items() for method in item
                      if method in ("get", "post", "put", "patch", "delete"))
    page = new_page(server.base_url + "/docs")
    # Swagger UI fetches the document, then lists each operation as an .opblock (under each of its tags).
    try:
        page.wait_for_function("n => document.querySelectorAll('.opblock').length >= n", arg=len(expected), timeout=30_000)
    except PlaywrightTimeout:
        raise AssertionError(f"/docs did not list the {len(expected)} operations; it shows: {page.inner_text('body')[:500]!r}")
    rendered = sorted(page.eval_on_selector_all(
        ".opblock", """blocks => blocks.map(b => [
            b.querySelector('.opblock-summary-method').textContent.trim().toUpperCase(),
            b.querySelector('.opblock-summary-path').getAttribute('data-path')])"""))
    # An operation with two tags is listed under each.
    assert sorted({tuple(op) for op in rendered}) == expected
    text = page.inner_text("body")
    assert "Unable to render" not in text and "Failed to load API definition" not in text
    assert page.locator(".errors-wrapper").count() == 0, page.inner_text(".errors-wrapper")


def test_two_pages_chat_over_the_browsers_websocket(server, origins, new_page):
    allowed, _ = origins
    client, agent = server.signup("client"), server.signup("agent")
    alice, bob = new_page(allowed.origin + "/"), new_page(allowed.origin + "/")
    for page, user in ((alice, client), (bob, agent)):
        opened = page.evaluate("([url, token]) => connect(url, token)", [ws_url(server), user.access_token])
        assert opened == {"opened": True, "protocol": "bearer"}, (opened, page.console)

    alice.evaluate("frame => sendFrame(frame)", {"receiver_id": agent.id, "message": "Is the flat still free?", "client_msg_id": "web-1"})
    ack = alice.wait_for_function("() => received.find(f => f.type === 'ack' && f.client_msg_id === 'web-1')").json_value()
    delivered = bob.wait_for_function("() => received.find(f => f.type === 'message' && f.client_msg_id === 'web-1')").json_value()
    assert isinstance(ack["id"], int) and ack["created_at"].endswith("Z")
    assert delivered["id"] == ack["id"] and delivered["message"] == "Is the flat still free?"
    assert delivered["sender_info"]["id"] == client.id and delivered["receiver_id"] == agent.id

    bob.evaluate("frame => sendFrame(frame)", {"receiver_id": client.id, "message": "Yes, come on Friday", "client_msg_id": "web-2"})
    reply_ack = bob.wait_for_function("() => received.find(f => f.type === 'ack' && f.client_msg_id === 'web-2')").json_value()
    reply = alice.wait_for_function("() => received.find(f => f.type === 'message' && f.client_msg_id === 'web-2')").json_value()
    assert reply["id"] == reply_ack["id"] > ack["id"] and reply["sender_info"]["id"] == agent.id
    assert alice.evaluate("() => socketEvents") == [] and bob.evaluate("() => socketEvents") == []

    # The same pages read it back over REST (CORS lets the allowed origin read the answer).
    history = alice.evaluate("([url, token]) => api(url, token)",
                             [f"{server.base_url}/api/v1/chat/chat-history/{agent.id}", client.access_token])
    assert history["status"] == 200 and [m["message"] for m in history["body"]] == ["Is the flat still free?", "Yes, come on Friday"]


def test_a_page_from_an_origin_not_in_cors_origins_is_refused(server, origins, new_page):
    allowed, foreign = origins
    user = server.signup("client")
    page = new_page(foreign.origin + "/")
    closed = page.evaluate("([url, token]) => connect(url, token)", [ws_url(server), user.access_token])
    assert closed["opened"] is False and closed["code"] == 1006, closed
    page.wait_for_function("() => socketEvents.some(e => e.type === 'close')")
    assert any("403" in line for line in page.console), page.console  # the handshake's answer, as the console shows it
    # Why, where people can read it: the server's log, and the 403's body for clients that can.
    assert f'"event": "ws_origin_refused", "origin": "{foreign.origin}"' in server.process.log_path.read_text()
    status, body = handshake(server, foreign.origin)
    assert status == 403 and body["code"] == "origin_not_allowed" and "CORS_ORIGINS" in body["detail"], body

    me = page.evaluate("([url, token]) => api(url, token)", [server.base_url + "/api/v1/users/me", user.access_token])
    assert "error" in me and "Failed to fetch" in me["error"], me
    assert any("blocked by CORS policy" in line for line in page.console), page.console

    # The same user, token and calls from the allowed origin work: the origin was the reason.
    page = new_page(allowed.origin + "/")
    assert page.evaluate("([url, token]) => connect(url, token)", [ws_url(server), user.access_token])["opened"] is True
    me = page.evaluate("([url, token]) => api(url, token)", [server.base_url + "/api/v1/users/me", user.access_token])
    assert me["status"] == 200 and me["body"]["id"] == user.id


def test_the_unsubscribe_link_asks_before_it_unsubscribes(server, new_page):
    # Mail scanners open every link of a mail: the link's GET only shows a page, and nothing changes
    # until a person presses its button (a form POST, as RFC 8058 wants the one-click POST to be).
    from sheda_rt.reminders.unsubscribe import UnsubscribeLinks

    user = server.signup("client")
    link = UnsubscribeLinks(server.env["JWT_SECRET"], server.base_url).url(user.id, "chat")  # what an email's link is
    settings = "/api/v1/users/me/notification-settings"
    page = new_page(link)
    assert page.title() == "Turn off chat message emails?"
    assert server.request("GET", settings, token=user.access_token)[1]["email"]["chat"] is True  # the visit changed nothing
    page.reload()  # a second visit neither
    assert server.request("GET", settings, token=user.access_token)[1]["email"]["chat"] is True
    page.click("#unsubscribe")
    page.wait_for_selector("#done")
    assert page.title() == "You are unsubscribed" and "chat message emails" in page.inner_text("#done")
    assert page.url == link  # the form posted to the link itself
    status, now = server.request("GET", settings, token=user.access_token)
    assert status == 200 and now["email"]["chat"] is False and now["email"]["appointments"] is True, now
    assert not [line for line in page.console if "Content Security Policy" in line], page.console

    # A made-up token: the page is not shown, the 422 says why.
    page = new_page(link[:-1] + ("A" if link[-1] != "A" else "B"))
    assert "is not a valid unsubscribe link" in page.inner_text("body")
