"""A small REST client for `taskmgr submit|status|cancel` (standard library only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class ApiUnreachable(Exception):
    """The api did not answer at all (refused, timed out, unresolvable)."""


class ApiClient:
    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 10.0) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = timeout
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self._base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **self._auth, **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as response:
                return response.status, _decode(response.read())
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, _decode(exc.read())) from None
        except OSError as exc:  # URLError included: nothing answered
            cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise ApiUnreachable(f"cannot reach the api at {self._base}: {cause}") from None

    def submit(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.request("POST", "/api/v1/tasks", body, headers)[1]  # type: ignore[no-any-return]

    def status(self, task_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/tasks/{task_id}")[1]  # type: ignore[no-any-return]

    def search(self, kb_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/kbs/{quote(kb_id, safe='')}/search", body)[1]  # type: ignore[no-any-return]

    def delete_document(self, kb_id: str, document_id: str) -> dict[str, Any]:
        path = f"/api/v1/kbs/{quote(kb_id, safe='')}/documents/{quote(document_id, safe='')}"
        return self.request("DELETE", path)[1]  # type: ignore[no-any-return]

    def documents(self, kb_id: str, status: str | None = None) -> dict[str, Any]:
        path = f"/api/v1/kbs/{quote(kb_id, safe='')}/documents?limit=200"
        return self.request("GET", path + (f"&status={quote(status)}" if status else ""))[1]  # type: ignore[no-any-return]

    def reembed(self, kb_id: str) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/kbs/{quote(kb_id, safe='')}/reembed", {})[1]  # type: ignore[no-any-return]

    def chunks(self, kb_id: str, document_id: str, cursor: str | None = None, limit: int = 50) -> dict[str, Any]:
        path = f"/api/v1/kbs/{quote(kb_id, safe='')}/documents/{quote(document_id, safe='')}/chunks?limit={limit}"
        return self.request("GET", path + (f"&cursor={cursor}" if cursor else ""))[1]  # type: ignore[no-any-return]

    def reprocess(self, kb_id: str, document_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        path = f"/api/v1/kbs/{quote(kb_id, safe='')}/documents/{quote(document_id, safe='')}/reprocess"
        return self.request("POST", path, {"payload": payload})[1]  # type: ignore[no-any-return]

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/api/v1/tasks/{task_id}")[1]  # type: ignore[no-any-return]


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")
