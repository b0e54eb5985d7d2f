"""The gateway's ASGI app (Starlette): TF Serving's REST API behind a licence check, and the owner's page.

Routes:

    POST /v1/licences              identity image (PNG body, or multipart) -> {"token": ...}; 400/401/403 + reason
    GET  /v1/models/NAME           TF Serving's model status
    POST /v1/models/NAME:predict   {"instances"|"inputs": images} + Authorization: Bearer -> {"predictions"|"outputs"}
    GET  /admin                    the owner's page (loopback clients, or ?token=ADMIN_TOKEN)
    POST /admin/revoke             revoke a user from the owner's page (the page's admin token required)

Every error is JSON `{"error": message, "reason": code}` with a 4xx status
(502 where an upstream model fails); the model runs in a worker thread, so a
slow batch does not hold up the licence checks of others.
"""

import contextlib
import json
import traceback

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ..errors import RegistryError
from . import admin
from .backends import BackendError
from .gateway import MAX_BODY_BYTES, GatewayError

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _too_large():
    return GatewayError(413, "too-large", f"the body must be at most {MAX_BODY_BYTES // (1024 * 1024)} MiB")


async def _body(request):
    """The request body, refused (413) past `MAX_BODY_BYTES`: from its Content-Length, else while reading."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise _too_large()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


async def _identity_image(request):
    """The PNG bytes of a licence request: the raw body, or the first file of a multipart form."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        declared = request.headers.get("content-length", "")
        if not declared.isdigit():
            raise GatewayError(411, "length-required", "a multipart upload needs a Content-Length header")
        if int(declared) > MAX_BODY_BYTES:
            raise _too_large()
        await request.body()  # bounded by the declared length; Starlette parses the form from it
        try:
            form = await request.form()
        except Exception:  # python-multipart's parse errors
            raise GatewayError(400, "bad-request", "the multipart form cannot be parsed") from None
        files = [value for value in form.values() if hasattr(value, "read")]
        if not files:
            raise GatewayError(400, "bad-request", "the multipart form holds no file; attach the identity image")
        return await files[0].read()
    return await _body(request)


class _Handlers:
    """The routes' endpoints over one `Gateway`."""

    def __init__(self, gateway):
        self.gateway = gateway

    async def licences(self, request):
        image = await _identity_image(request)
        try:
            return JSONResponse(await run_in_threadpool(self.gateway.licence, image))
        except BackendError as error:  # the model check could not be asked
            raise GatewayError(502, "upstream", str(error)) from None

    async def model_status(self, request):
        gateway = self.gateway
        state = await run_in_threadpool(gateway.backend.status)
        return JSONResponse({"model_version_status": [{
            "version": str(gateway.version), "state": state,
            "status": {"error_code": "OK" if state == "AVAILABLE" else "UNAVAILABLE", "error_message": ""}}]})

    async def predict(self, request):
        gateway = self.gateway
        user = gateway.authorise(request.headers.get("authorization"))
        try:
            body = json.loads(await _body(request))
        except (ValueError, UnicodeDecodeError):
            raise GatewayError(400, "malformed-json", "the body is not valid JSON") from None
        key, images = gateway.batch(body)
        try:
            probabilities = await run_in_threadpool(gateway.predict, user, images)
        except BackendError as error:
            raise GatewayError(502, "upstream", str(error)) from None
        return JSONResponse({"predictions" if key == "instances" else "outputs": probabilities.tolist()})

    async def models(self, request):
        name, path = self.gateway.name, request.path_params["path"]
        if path == name and request.method == "GET":
            return await self.model_status(request)
        if path == f"{name}:predict" and request.method == "POST":
            return await self.predict(request)
        raise GatewayError(404, "not-found", f"no model {path.split(':')[0]!r} here; this gateway serves "
                                             f"/v1/models/{name}")

    def _check_admin(self, request, token):
        local = request.client is not None and request.client.host in _LOOPBACK
        if token != self.gateway.admin_token and not (local and token is None):
            raise GatewayError(403, "admin-only", "the owner's page is for loopback clients or ?token=ADMIN_TOKEN "
                                                  "(printed when the gateway starts)")

    async def admin_page(self, request):
        self._check_admin(request, request.query_params.get("token"))
        return HTMLResponse(await run_in_threadpool(admin.page, self.gateway))

    async def admin_revoke(self, request):
        form = await request.form()
        self._check_admin(request, form.get("token") or "")  # the page's own token: a foreign page cannot post here
        try:
            await run_in_threadpool(self.gateway.vault.revoke_user, form.get("name") or "")
        except RegistryError as error:
            raise GatewayError(404, "unknown-user", str(error)) from None
        self.gateway.users.invalidate()
        return RedirectResponse(f"/admin?token={self.gateway.admin_token}", status_code=303)


async def _gateway_error(request, error):
    return JSONResponse(error.to_dict(), status_code=error.status)


async def _http_error(request, error):
    return JSONResponse({"error": error.detail, "reason": f"http-{error.status_code}"}, status_code=error.status_code)


async def _internal_error(request, error):
    traceback.print_exception(error)
    return JSONResponse({"error": "internal error (logged by the gateway)", "reason": "internal"}, status_code=500)


async def _disconnected(request, error):
    return Response(status_code=499)  # the client left; nothing to answer


def create_app(gateway):
    """The ASGI app serving `gateway` (a `Gateway`); its lifespan writes the audit log out on shutdown."""
    handlers = _Handlers(gateway)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        gateway.close()

    return Starlette(
        routes=[Route("/v1/licences", handlers.licences, methods=["POST"]),
                Route("/v1/models/{path:path}", handlers.models, methods=["GET", "POST"]),
                Route("/admin", handlers.admin_page, methods=["GET"]),
                Route("/admin/revoke", handlers.admin_revoke, methods=["POST"])],
        exception_handlers={GatewayError: _gateway_error, HTTPException: _http_error,
                            ClientDisconnect: _disconnected, Exception: _internal_error},
        lifespan=lifespan,
    )
