"""`GET /api/v1/me`: what the presented API key may do, so a client (the
console) can offer only the actions the key may take."""

from __future__ import annotations

from aiohttp import web

from services.api.auth import AUTHENTICATOR, principal_of
from services.api.http import json_response
from services.api.openapi import Operation, documented
from services.api.schemas import Identity

routes = web.RouteTableDef()


@routes.get("/api/v1/me")
@documented(Operation(summary="The caller's API key: its scopes and knowledge bases", tag="operations",
                      responses={200: (Identity, "The key's name, scopes and knowledge bases.")}))
async def whoami(request: web.Request) -> web.Response:
    principal = principal_of(request)
    return json_response(Identity(
        name=principal.name, anonymous=principal.is_anonymous, scopes=sorted(principal.scopes),
        kb_ids=sorted(principal.kb_ids) if principal.kb_ids is not None else None,
        auth_required=request.app[AUTHENTICATOR].required,
    ))
