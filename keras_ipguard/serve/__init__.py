"""`ipguard serve`: the licence gateway in front of the model (TF Serving's REST API, for licensed users only).

A licensed user POSTs their identity image to `/v1/licences` and gets a
bearer token; `:predict` requests with that token reach the model (the
vault's export in process, or an upstream TF Serving), and answer the N task
classes only. A revoked user's token stops working at their next request.
Every licence attempt and prediction is in the vault's audit log.

Example (Python):

    from keras_ipguard import Vault
    from keras_ipguard.serve import open_gateway, run
    run(open_gateway(Vault.open("fm-vault"), model="serving/fm/1"), port=8500)
"""

from .gateway import Gateway, GatewayError, model_name, model_version

__all__ = ["Gateway", "GatewayError", "create_app", "open_gateway", "run"]


def open_gateway(vault, model=None, upstream=None, name=None, **options):
    """A `Gateway` for `vault` serving `model` (a SavedModel `DIR/N`), an `upstream` TF Serving URL, or the
    vault's own model; `options` go to `Gateway` (token_ttl, rate, flush_seconds)."""
    from ..errors import IPGuardError
    from .backends import InProcessBackend, UpstreamBackend

    if model and upstream:
        raise IPGuardError("give --model or --upstream, not both")
    if not vault.has_watermark_class:
        raise IPGuardError(f"vault {vault.path} issues no identity images (its scheme has no watermark class), "
                           "so it cannot license users")
    backend = UpstreamBackend(vault, upstream) if upstream else InProcessBackend(vault, model)
    return Gateway(vault, backend, name or model_name(model, upstream, vault.path), model_version(model), **options)


def create_app(gateway):
    """The gateway's ASGI app (see `keras_ipguard.serve.app`)."""
    from .app import create_app as make

    return make(gateway)


def run(gateway, host="127.0.0.1", port=8500, on_ready=None):
    """Serves `gateway` with uvicorn until SIGINT/SIGTERM; the audit log is written out on the way down.

    `on_ready(port)` is called once the socket listens, with the port bound (`port=0` picks a free one).
    """
    import gc
    import socket

    import uvicorn

    from ..errors import IPGuardError

    try:  # a port in use or a host that is not this machine's: one line, before uvicorn's own start-up
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, int(port)))
    except OSError as error:
        raise IPGuardError(f"cannot listen on {host}:{port} ({error.strerror}); choose another --port or --host, "
                           "or stop what holds it") from None

    # Every request body becomes tens of thousands of small objects; without this, the collector's full passes
    # also walk TensorFlow's (model, graph) objects and stall a request now and then (p99 12x the p50 at batch 32).
    gc.freeze()
    config = uvicorn.Config(create_app(gateway), host=host, port=int(port), log_level="warning",
                            access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    if on_ready is not None:
        startup = server.startup

        async def announced_startup(sockets=None):
            await startup(sockets=sockets)
            on_ready(server.servers[0].sockets[0].getsockname()[1])

        server.startup = announced_startup
    server.run()
