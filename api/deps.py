"""Request dependencies: the app state, the caller (bearer token) and what it may see."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from api import metrics
from api.scope import Scope
from api.state import AppState
from api.tokens import Principal, Role, verify_token
from core.network import Network
from core.text import safe_text

log = logging.getLogger("symbiont.api.auth")

ALL_ROLES = frozenset(Role)
READERS = frozenset({Role.admin, Role.operator, Role.partner})


async def get_state(request: Request) -> AppState:
    # async: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop per request.
    state: AppState = request.app.state.symbiont
    return state


State = Annotated[AppState, Depends(get_state)]


def _unauthorized(request: Request, reason: str) -> HTTPException:
    # The token itself is never logged, not even in part.  The path is the caller's text:
    # quoted (repr) in the line and cut, so it can neither forge a line nor flood the log.
    client = request.client.host if request.client else "-"
    path = safe_text(request.scope.get("path", ""), 300)
    metrics.AUTH_FAILURES.inc()
    log.warning(
        "authentication failed: %s (%s %r from %s)",
        reason,
        request.method,
        path,
        client,
        extra={"method": request.method, "path": path, "client": client},
    )
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail=f"authentication failed: {reason}",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def get_principal(request: Request, state: State) -> Principal:
    header = request.headers.get("authorization")
    if not header:
        raise _unauthorized(request, "no Authorization header (Bearer token expected)")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized(request, "the Authorization header is not 'Bearer <token>'")
    principal = state.tokens.get(token)
    if principal is None:
        principal = await verify_token(state.pool, token)
        if principal is None:
            raise _unauthorized(request, "unknown or revoked token")
        state.tokens.put(token, principal)
    return principal


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal
    scope: Scope

    @property
    def network(self) -> Network:
        return self.scope.network

    @property
    def name(self) -> str:
        """Who this is in what it records (acknowledgements, silences): the token's name, or
        its role, partner and id when the token has no name."""
        p = self.principal
        if p.name.strip():
            return safe_text(p.name.strip(), 200)
        return (
            f"{p.role.value}:{p.partner}#{p.token_id}"
            if p.partner
            else (f"{p.role.value}#{p.token_id}")
        )


def allow(*roles: Role) -> Callable[..., Awaitable[Caller]]:
    """A dependency admitting only ``roles`` (403 for other valid tokens)."""
    allowed = frozenset(roles)

    async def dependency(
        state: State, principal: Annotated[Principal, Depends(get_principal)]
    ) -> Caller:
        if principal.role not in allowed:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"the {principal.role.value} role may not do this",
            )
        net = await state.network.get(state.pool)
        return Caller(principal, state.network.scope(net, principal))

    dependency.__name__ = "allow_" + "_".join(sorted(r.value for r in allowed))
    return dependency


def not_found(what: str, ident: str) -> HTTPException:
    # ``ident`` comes from the request: escaped, so the answer always encodes.
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no {what} '{safe_text(ident, 200)}'")
