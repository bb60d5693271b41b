"""``epigraf view``: an interactive 3D viewer in the browser, served by the standard library.

    renderer = Renderer(load_checkpoint("net.safetensors").G_ema)
    server = ViewerServer(renderer, "127.0.0.1", 8000)
    print(server.url); server.serve_forever()

``session`` (its ``Renderer``) holds the model, the tri-plane cache and the superseding of stale requests;
``server`` the HTTP API and the origin checks; ``params`` the request parameters; ``static/`` the page.
"""

from epigraf.viewer.server import ViewerServer
from epigraf.viewer.session import Renderer

__all__ = ["Renderer", "ViewerServer"]
