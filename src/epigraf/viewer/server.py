"""The viewer's HTTP server: the page and a small JSON / image API, standard library only (``http.server``).

GET endpoints (query parameters: ``epigraf.viewer.params``):

    /                the page (index.html, viewer.js, viewer.css)
    /api/info        the model, camera ranges and defaults (JSON)
    /api/frame       one view → image/png or image/jpeg; headers X-Render-Ms, X-Cache (hit | miss), X-Seq
    /api/mesh        a coloured mesh of the latent as a download (.ply, .obj, .glb)
    /api/stats       counters: frames, superseded requests, tri-plane cache hits and misses (JSON)

Errors are JSON ``{"error": message}``: 400 bad parameter, 403 refused origin, 404 unknown path, 409 superseded
(``"superseded": true``; the page ignores it, a newer answer is on its way), 500 anything else — the server
keeps serving.

Origin policy (the API spends the machine's GPU/CPU, so only this page may call it): the Host header must name
this server (127.0.0.1, localhost, [::1], the bound address or an ``--allow-host`` name, with its port), which
defeats DNS rebinding; a request with an Origin header must come from that same origin; and a browser's
Sec-Fetch-Site must be same-origin or none (typed address), which also refuses other sites' <img> and <script>
tags, which send no Origin header on GET. Refusals are 403.
"""

from __future__ import annotations

import json
import logging
import select
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from epigraf.viewer.params import parse_frame, parse_mesh
from epigraf.viewer.session import Renderer, Superseded

log = logging.getLogger(__name__)

_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/viewer.js": ("viewer.js", "text/javascript; charset=utf-8"),
    "/viewer.css": ("viewer.css", "text/css; charset=utf-8"),
}
_MESH_TYPES = {"ply": "application/octet-stream", "obj": "text/plain; charset=ascii", "glb": "model/gltf-binary"}
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
_WILDCARDS = ("", "0.0.0.0", "::")
_LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]")
# A connection that sends nothing (an idle keep-alive, a stalled client) for this long is closed, so that
# abandoned connections do not hold a thread each forever.
IDLE_TIMEOUT_S = 30.0


_UNROUTED_ADDRESS = "192.0.2.1"  # TEST-NET-1: "connecting" a UDP socket to it sends nothing, only picks a route


def machine_addresses(ipv6: bool = False) -> list[str]:
    """This machine's own non-loopback IP addresses (IPv4; with ``ipv6`` also IPv6), for a wildcard bind:
    those of its host name, and that of the interface the default route leaves by."""
    found: dict[str, None] = {}
    families = (socket.AF_INET, socket.AF_INET6) if ipv6 else (socket.AF_INET,)
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None)
    except OSError:
        infos = []
    for family, _, _, _, sockaddr in infos:
        if family in families:
            found[str(sockaddr[0]).split("%")[0]] = None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((_UNROUTED_ADDRESS, 9))
            found[probe.getsockname()[0]] = None
    except OSError:
        pass  # no route: the host name's addresses are all there is
    return [a for a in found if not a.startswith("127.") and a != "::1"]


def _read_static() -> dict[str, bytes]:
    folder = resources.files("epigraf.viewer") / "static"
    return {name: (folder / name).read_bytes() for name, _ in _STATIC.values()}


class ViewerServer(ThreadingHTTPServer):
    """A threading HTTP server around one Renderer; ``port=0`` picks a free port (see ``url``)."""

    daemon_threads = True

    def __init__(self, renderer: Renderer, host: str = "127.0.0.1", port: int = 8000,
                 allowed_hosts: tuple[str, ...] | list[str] = (), idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
        self.idle_timeout_s = idle_timeout_s
        if ":" in host:
            self.address_family = socket.AF_INET6
        try:
            super().__init__((host, port), ViewerHandler)
        except OSError as err:
            raise ValueError(f"cannot serve on {host}:{port}: {err.strerror or err} "
                             f"(pass another --port, or 0 for any free port)") from err
        self.renderer = renderer
        self.static = _read_static()
        port = self.server_address[1]
        names = {*_LOCAL_NAMES, *(h.lower() for h in allowed_hosts)}
        # A wildcard bind is reached through the machine's own addresses: the page served there may call the API.
        self.addresses = machine_addresses(ipv6=host == "::") if host in _WILDCARDS else [host.lower()]
        names.update(f"[{a}]" if ":" in a else a for a in self.addresses)
        # Browsers leave the default port out of Host and Origin.
        self.allowed_hosts = {f"{n}:{port}" for n in names} | (names if port == 80 else set())

    @property
    def url(self) -> str:
        """The page's address (a wildcard bind is reached through 127.0.0.1)."""
        host, port = self.server_address[:2]
        if host in _WILDCARDS:
            host = "127.0.0.1"
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    @property
    def other_urls(self) -> list[str]:
        """The page's addresses on this machine's network interfaces, for a wildcard bind (else none)."""
        if self.server_address[0] not in _WILDCARDS:
            return []
        port = self.server_address[1]
        return [f"http://{f'[{a}]' if ':' in a else a}:{port}/" for a in self.addresses]


class ViewerHandler(BaseHTTPRequestHandler):
    """One request: origin check, then the page, the API or a JSON error."""

    server: ViewerServer
    server_version = "epigraf-view"

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout_s  # StreamRequestHandler applies it to the socket
        super().setup()

    def _client_gone(self) -> bool:
        """Whether the client closed its connection (readable with nothing to read), e.g. the page was closed
        or navigated away while its frame waited for the model."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def do_GET(self) -> None:
        refusal = self._refusal()
        if refusal is not None:
            self._json(403, {"error": refusal})
            return
        url = urlsplit(self.path)
        try:
            if url.path in _STATIC:
                name, content_type = _STATIC[url.path]
                self._send(200, self.server.static[name], content_type)
            elif url.path == "/api/info":
                self._json(200, self.server.renderer.info())
            elif url.path == "/api/stats":
                self._json(200, self.server.renderer.stats())
            elif url.path == "/api/frame":
                self._frame(url.query)
            elif url.path == "/api/mesh":
                self._mesh(url.query)
            else:
                self._json(404, {"error": f"no such page: {url.path}"})
        except Superseded as err:
            self._json(409, {"error": str(err), "superseded": True})
        except ValueError as err:  # ParameterError, and the model's own checks on a request's values
            self._json(400, {"error": str(err)})
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            log.debug("%s closed the connection before the answer", self.client_address[0])
        except Exception as err:  # a failed request must not stop the server (e.g. out of memory)
            log.exception("request %s failed", self.path)
            self._json(500, {"error": f"internal error: {type(err).__name__}: {err}"})

    def _frame(self, query: str) -> None:
        renderer = self.server.renderer
        req, seqn = parse_frame(query, renderer.limits)
        frame = renderer.frame(req, seqn, self._client_gone)
        headers = {"X-Render-Ms": f"{frame.render_ms:.1f}", "X-Cache": "hit" if frame.cache_hit else "miss"}
        if seqn.seq is not None:
            headers["X-Seq"] = str(seqn.seq)
        self._send(200, frame.data, frame.content_type, headers)

    def _mesh(self, query: str) -> None:
        req = parse_mesh(query, self.server.renderer.limits)
        data, name = self.server.renderer.mesh(req)
        self._send(200, data, _MESH_TYPES[req.mesh_format], {"Content-Disposition": f'attachment; filename="{name}"'})

    def _refusal(self) -> str | None:
        """Why this request may not use the viewer (None: it may); the module docstring has the policy."""
        host = (self.headers.get("Host") or "").lower()
        if host not in self.server.allowed_hosts:
            return (f"refused: Host {host or '(none)'!r} is not this viewer's address; "
                    f"start it with --allow-host NAME to serve it under another name")
        origin = self.headers.get("Origin")
        if origin is not None and origin.lower() != f"http://{host}":
            return f"refused: requests from {origin} are not allowed (only this viewer's own page)"
        site = self.headers.get("Sec-Fetch-Site")
        if site is not None and site.lower() not in ("same-origin", "none"):
            return f"refused: {site} requests are not allowed (only this viewer's own page)"
        return None

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode("utf-8"), "application/json; charset=utf-8")

    def _send(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cross-Origin-Resource-Policy", "same-origin")
            self.send_header("Referrer-Policy", "no-referrer")
            if content_type.startswith("text/html"):
                self.send_header("Content-Security-Policy", _CSP)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            log.debug("%s closed the connection before the answer", self.client_address[0])

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.client_address[0], format % args)
