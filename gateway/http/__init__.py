"""The HTTP edge: the ASGI app and the server that runs it."""
