"""Calls the command line makes to a Satscale server."""

from __future__ import annotations

from typing import Any

from sr_core.errors import SatscaleError


def server_call(method: str, url: str, *, accept: tuple[int, ...] = (200,), **kwargs: Any) -> dict[str, Any]:
    """A Satscale server's JSON answer (with a status in `accept`); its problem's detail (or the
    transport's failure) as the error."""
    import httpx

    try:
        response = httpx.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        raise SatscaleError(f"cannot reach {url}: {exc}") from None
    try:
        body = response.json()
    except ValueError:
        raise SatscaleError(f"{url} answered {response.status_code} without JSON: {response.text[:200]}") from None
    if response.status_code not in accept:
        raise SatscaleError(body.get("detail", response.text) if isinstance(body, dict) else response.text)
    return body
