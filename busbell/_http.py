"""Running a uvicorn server as one task among others (the rider API, the fleet view)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uvicorn

__all__ = ["serve_http"]


async def serve_http(server: uvicorn.Server) -> None:
    """Run ``server``; when cancelled, still close its listening sockets and connections.

    uvicorn closes them only in its own shutdown, after ``should_exit`` is seen by its
    main loop. A task group cancels ``serve()`` (on stop, or when another task fails),
    which skips that shutdown: the listening socket stayed open, and the port bound,
    until the garbage collector found it.
    """
    try:
        await server.serve()
    finally:
        for listener in getattr(server, "servers", ()):
            listener.close()
        for connection in list(server.server_state.connections):
            connection.shutdown()
