"""Errors a request can cause, and the JSON body every error response carries.

A request error always names the field at fault and says how to fix it, so a client in any
language can show the message as is; no traceback ever leaves the server.
"""

from __future__ import annotations

from typing import Any


class RequestError(Exception):
    """A client mistake: HTTP `status`, the `field` at fault, what is wrong and the fix."""

    def __init__(self, status: int, field: str, message: str, fix: str = "",
                 headers: dict[str, str] | None = None):
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message, self.fix = status, field, message, fix
        self.headers = headers or {}

    def __reduce__(self):  # raised in the parser process, re-raised in the server
        return (RequestError, (self.status, self.field, self.message, self.fix, self.headers))

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.field, self.fix)


def error_body(status: int, message: str, field: str | None = None, fix: str = "") -> dict[str, Any]:
    """`{"error": {"status", "field", "message", "fix"}}`: the one shape of every error response."""
    return {"error": {"status": status, "field": field, "message": message, "fix": fix}}
