"""``epigraf view``: an interactive 3D viewer in the browser, served by the standard library.

    renderer = Renderer(load_checkpoint("net.safetensors").G_ema)
    server = ViewerServer(renderer, "127.0.0.1", 8000)
    print(server.url); server.serve_forever()

``renderer`` holds the model, the tri-plane cache and the superseding of stale requests; ``server`` the HTTP
API and the origin checks; ``params`` the request parameters; ``static/`` the page.
"""

from epigraf.viewer.renderer import Renderer
from epigraf.viewer.server import ViewerServer

__all__ = ["Renderer", "ViewerServer"]
