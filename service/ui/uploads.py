"""The web app's rule for files: a handler reads only a file Gradio stored for an upload to
this server, never a path a caller names.

Every Gradio handler is an HTTP endpoint, and a FileData value is just `{"path": ...}`, so a
raw `POST /gradio_api/call/<name>` can name any file on the server. Gradio refuses such a path
itself only once it believes it has launched; mounted in FastAPI it never does (`mount` below
turns that check on). This guard is the rule we own: the path must be one Gradio's upload
route wrote (it keeps their set), inside its upload folder, a regular file (no link), within
the upload size limit. Anything else is refused with one message whatever the reason, so
the refusal tells nothing about what exists on the server.
"""

from __future__ import annotations

import os
import stat
from collections import OrderedDict
from pathlib import Path
from typing import Any

from gradio.utils import get_upload_folder

from sr_core.errors import ParameterError

REFUSAL = "that file is not an upload to this server: upload the image again"
#: inspected uploads remembered (a quote is asked on every change of model or scale)
REMEMBERED = 128


class NotAnUpload(ParameterError):
    """Answered like any invalid parameter (422), with one text whatever the reason."""

    def __init__(self) -> None:
        super().__init__(REFUSAL)


class UploadGuard:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.uploaded: set[str] = set()  # bound to the mounted Blocks' upload_file_set by `bind`
        self._facts: OrderedDict[tuple[str, int, int], Any] = OrderedDict()

    def bind(self, uploaded: set[str]) -> None:
        self.uploaded = uploaded

    def path(self, value: Any) -> Path:
        if not isinstance(value, str) or not value or "\x00" in value:
            raise NotAnUpload()
        folder = os.path.realpath(get_upload_folder())
        real = os.path.realpath(value)
        if os.path.commonpath([folder, real]) != folder:
            raise NotAnUpload()
        if value not in self.uploaded and real not in self.uploaded:
            raise NotAnUpload()
        try:
            info = os.lstat(value)
        except OSError:
            raise NotAnUpload() from None
        if not stat.S_ISREG(info.st_mode) or info.st_size > self.max_bytes:
            raise NotAnUpload()
        return Path(real)

    def read(self, value: Any) -> bytes:
        path = self.path(value)
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            raise NotAnUpload() from None
        with os.fdopen(descriptor, "rb") as handle:
            data = handle.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise NotAnUpload()
        return data

    def remembered(self, value: Any) -> Any | None:
        """What `remember` stored for this upload (unchanged since), if anything."""
        key = self._key(value)
        return self._facts.get(key) if key else None

    def remember(self, value: Any, facts: Any) -> None:
        key = self._key(value)
        if key:
            self._facts[key] = facts
            while len(self._facts) > REMEMBERED:
                self._facts.popitem(last=False)

    def _key(self, value: Any) -> tuple[str, int, int] | None:
        try:
            path = self.path(value)
            info = path.stat()
        except (NotAnUpload, OSError):
            return None
        return (str(path), info.st_size, info.st_mtime_ns)


class UploadSizeLimit:
    """ASGI middleware: one request to Gradio's upload route carries at most one upload's worth
    of bytes. (Gradio caps each file, but takes up to a thousand files per request.) A declared
    length over the limit is refused with 413 at once; a body that grows past it is cut off."""

    def __init__(self, app: Any, limit: int, path: str = "/gradio_api/upload") -> None:
        self.app = app
        self.limit = limit + 64 * 1024  # multipart framing around the file
        self.path = path

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].endswith(self.path):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            body = f"the upload exceeds {self.limit} bytes".encode()
            await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": body})
            return
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    return {"type": "http.disconnect"}
            return message

        await self.app(scope, counted, send)
