"""``GET /v1/relays``: the streams this node relays, for operators (bearer token)."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Request


def add_relay_routes(
    app: FastAPI, relays: Callable[[], list[dict[str, Any]]], operator_token: str
) -> None:
    async def list_relays(request: Request) -> dict[str, Any]:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        ok = (
            bool(operator_token)
            and scheme.lower() == "bearer"
            and hmac.compare_digest(given.strip().encode(), operator_token.encode())
        )
        if not ok:
            raise HTTPException(
                401,
                "operator bearer token required ('ingest.operator_token')",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return {"relays": relays()}

    app.add_api_route(
        "/v1/relays",
        list_relays,
        methods=["GET"],
        summary="The streams this node relays",
        description="Each relayed stream with its upstream, the renditions pulled and how far, "
        "the bytes pulled and its idle time (operator bearer token, `ingest.operator_token`).",
        tags=["relay"],
        responses={401: {"description": "No operator bearer token, or a wrong one."}},
    )
