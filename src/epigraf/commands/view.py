"""``epigraf view CHECKPOINT``: serve an interactive viewer of a generator on a local web page.

Drag to orbit, wheel to zoom, pick seeds, classes and truncation, switch RGB / depth / normals, save the PNG
(identical to ``epigraf generate`` for the same settings) or export a mesh. An imported original checkpoint
(``epigraf import``) is an ordinary checkpoint here.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from epigraf.checkpoint import load_checkpoint
from epigraf.commands.arguments import add_device_argument, add_port_argument
from epigraf.viewer.server import ViewerServer
from epigraf.viewer.session import DEFAULT_CACHE_SIZE, DEFAULT_MAX_RESOLUTION, Renderer

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("view", help="interactive viewer in the browser (local HTTP server)")
    p.add_argument("checkpoint", type=Path, help="an epigraf checkpoint (.safetensors), e.g. from epigraf import")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: this machine only; use SSH port forwarding to view remotely)")
    add_port_argument(p, default=8000)
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also accept requests addressed to this host name (repeatable; for --host 0.0.0.0)")
    add_device_argument(p)
    p.add_argument("--cache-size", type=int, default=DEFAULT_CACHE_SIZE,
                   help="latents whose tri-planes are kept (an ffhq256 latent's take ~100 MB)")
    p.add_argument("--max-resolution", type=int, default=DEFAULT_MAX_RESOLUTION,
                   help="largest image side a page may ask for")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ckpt = load_checkpoint(args.checkpoint, args.device)
    renderer = Renderer(ckpt.G_ema, args.cache_size, args.max_resolution, name=ckpt.config.name,
                        checkpoint=str(args.checkpoint))
    server = ViewerServer(renderer, args.host, args.port, args.allow_host)
    print(f"epigraf view: {ckpt.config.name or args.checkpoint.name} at {server.url}  (Ctrl+C to stop)", flush=True)
    for url in server.other_urls:
        print(f"  also at {url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        server.server_close()
    return 0
