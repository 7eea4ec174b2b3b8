"""Running a uvicorn server as one task among others (the rider API, the fleet view)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from busbell._errors import UplinkError

if TYPE_CHECKING:
    import socket

    import uvicorn

__all__ = ["GRACEFUL_SHUTDOWN_S", "http_server", "serve_http"]

GRACEFUL_SHUTDOWN_S = 5
"""How long a stopping server waits for open responses before it cancels them.

uvicorn waits without limit by default, and a response that never ends by itself (the
fleet view's server-sent events, a hung client) held the process forever.
"""


def http_server(
    config: uvicorn.Config, *, on_shutdown: Callable[[], None] | None = None
) -> uvicorn.Server:
    """A uvicorn server for a process whose caller owns the signals.

    ``uvicorn.Server.serve`` installs its own SIGINT and SIGTERM handlers while it runs
    (uvicorn >= 0.29), replacing the caller's: ``busbell demo``'s SIGTERM then only asked
    the fleet view to shut down, and the demo and its children never stopped. This
    server installs none. ``on_shutdown`` is called when its shutdown begins, so that
    endless responses (server-sent events) can end themselves.
    """
    import uvicorn

    class _CallerOwnsSignals(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            if on_shutdown is not None:
                on_shutdown()
            await super().shutdown(sockets)

    return _CallerOwnsSignals(config)


async def serve_http(server: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
    """Run ``server``; when cancelled, still close its listening sockets and connections.

    uvicorn closes them only in its own shutdown, after ``should_exit`` is seen by its
    main loop. A task group cancels ``serve()`` (on stop, or when another task fails),
    which skips that shutdown: the listening socket stayed open, and the port bound,
    until the garbage collector found it. A shutdown waits at most
    :data:`GRACEFUL_SHUTDOWN_S` for open responses unless the server's config sets its
    own ``timeout_graceful_shutdown``. ``sockets`` are listening sockets the caller
    bound; when uvicorn binds itself and fails, :class:`busbell.UplinkError` is raised.
    """
    if server.config.timeout_graceful_shutdown is None:
        server.config.timeout_graceful_shutdown = GRACEFUL_SHUTDOWN_S
    try:
        await server.serve(sockets=sockets)
    except SystemExit as exc:
        # uvicorn's startup failed (its own bind: the port is in use, say) and called
        # sys.exit inside this task: the process did not end but went on without its HTTP
        # server, and hung at exit. Fail the task like any other error instead.
        cfg = server.config
        raise UplinkError(
            f"HTTP server could not start on {cfg.host}:{cfg.port} (uvicorn exit {exc.code}; "
            "is the port in use?)"
        ) from None
    finally:
        for listener in getattr(server, "servers", ()):
            listener.close()
        for connection in list(server.server_state.connections):
            connection.shutdown()
