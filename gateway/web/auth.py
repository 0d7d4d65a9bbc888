"""Authorisation policies applied to routes, written once (like HAPI FHIR interceptors).

The hospital-internal face is reachable only inside the hospital network; destructive operations still
need the site administrator's bearer token, compared in constant time.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, request

from gateway.web.problems import Problem

F = TypeVar("F", bound=Callable[..., Any])


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def require_admin(view: F) -> F:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tokens: list[str] = current_app.extensions["gateway.node"].settings.admin_tokens
        if not tokens:
            raise Problem(403, "this operation is disabled: no site-administrator token is configured "
                                "(admin_tokens)")
        token = bearer_token()
        if token is None:
            raise Problem(401, "this operation needs the site administrator's bearer token")
        if not any(hmac.compare_digest(token.encode(), known.encode()) for known in tokens):
            raise Problem(403, "the bearer token does not grant the site-administrator scope")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
