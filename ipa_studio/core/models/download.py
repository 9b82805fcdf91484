"""Downloading catalog entries from a Hugging Face hub: resumable, cancellable, hash-checked, atomic.

The HTTP is done here (stdlib ``urllib``) rather than through ``hf_hub_download`` so that progress,
cancel between chunks and resume with ``Range`` are under our control; huggingface_hub only builds the
URLs. Each file is written to ``<target>.part``; an interrupted download leaves that file and the next
call continues from its end. A file only gets its real name (``os.replace``, atomic) once its size and
sha256 are right, so a half-written or wrong file never sits under a model's name.

The endpoint comes from the ``endpoint`` argument, else ``HF_ENDPOINT``, else huggingface.co; tests
point it at a local server. ``HF_HUB_OFFLINE=1`` turns every download off.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ipa_studio import __version__
from ipa_studio.core.errors import Cancelled, IPAStudioError
from ipa_studio.core.models.catalog import CatalogEntry

DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20
RETRIES = 3
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


class DownloadError(IPAStudioError):
    """A download failed: no network, not found, interrupted too often, or a wrong hash."""


def resolve_endpoint(endpoint: str | None = None) -> str:
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline_mode() -> bool:
    """True when the user asked huggingface tools to stay offline (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # Redirects are followed by hand: the hub puts an LFS file's size and sha256 on the first (302)
    # response only, and urllib would drop those headers and turn a HEAD into a GET.
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


_opener = urllib.request.build_opener(_NoRedirect)


@dataclass
class _Response:
    status: int
    headers: dict[str, str]
    """Headers of every hop, the first hop's winning (that is where the hub puts LFS metadata)."""
    body: http.client.HTTPResponse | None


def _request(url: str, *, method: str = "GET", headers: dict[str, str] | None = None, timeout: float = 30.0):
    """Send a request, following up to 5 redirects; raise ``urllib.error.HTTPError`` for 4xx/5xx."""
    seen: dict[str, str] = {}
    hdrs = {"User-Agent": f"ipa-studio/{__version__}", **(headers or {})}
    for _ in range(6):
        req = urllib.request.Request(url, method=method, headers=hdrs)
        try:
            resp = _opener.open(req, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code in (301, 302, 303, 307, 308) and exc.headers.get("Location"):
                for k, v in exc.headers.items():
                    seen.setdefault(k.lower(), v)
                url = urllib.parse.urljoin(url, exc.headers["Location"])
                exc.close()
                continue
            raise
        for k, v in resp.headers.items():
            seen.setdefault(k.lower(), v)
        if method == "HEAD":
            resp.close()
            return _Response(resp.status, seen, None)
        return _Response(resp.status, seen, resp)
    raise DownloadError(f"Too many redirects for {url}.")


def network_available(timeout: float = 2.0, endpoint: str | None = None) -> bool:
    """Whether the hub answers at all (any HTTP status counts). False in offline mode, never raises."""
    if offline_mode():
        return False
    try:
        _request(resolve_endpoint(endpoint) + "/", method="HEAD", timeout=timeout)
        return True
    except urllib.error.HTTPError:
        return True  # it answered; a 4xx on "/" still means the network is there
    except (OSError, DownloadError, http.client.HTTPException, ValueError):
        return False


def file_url(repo_id: str, filename: str, revision: str = "main", endpoint: str | None = None) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo_id, filename, revision=revision, endpoint=resolve_endpoint(endpoint))


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None


def list_repo_files(repo_id: str, revision: str = "main", endpoint: str | None = None) -> list[RemoteFile]:
    """Files of a model repo with sizes and (for LFS files) sha256, from the hub's tree API."""
    if offline_mode():
        raise DownloadError("Offline mode is on (HF_HUB_OFFLINE): nothing can be downloaded.")
    quoted = urllib.parse.quote(revision, safe="")
    url = f"{resolve_endpoint(endpoint)}/api/models/{repo_id}/tree/{quoted}?recursive=true"
    try:
        resp = _request(url, timeout=30.0)
        assert resp.body is not None
        with resp.body:
            items = json.loads(resp.body.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        raise _http_error(exc, repo_id, "") from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise DownloadError(f"Could not list the files of '{repo_id}': {_reason(exc)}.") from exc
    out = []
    for item in items:
        if item.get("type") != "file":
            continue
        lfs = item.get("lfs") or {}
        sha = lfs.get("oid") or lfs.get("sha256")
        out.append(RemoteFile(item["path"], int(lfs.get("size", item.get("size", 0))), sha))
    return out


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "the server stopped answering (timeout)"
    if isinstance(exc, ConnectionRefusedError):
        return "the connection was refused"
    if isinstance(exc, socket.gaierror):
        return "the server name could not be resolved (no network?)"
    text = str(exc).strip()
    return text or type(exc).__name__


def _http_error(exc: urllib.error.HTTPError, repo_id: str, filename: str) -> DownloadError:
    what = f"'{filename}' in '{repo_id}'" if filename else f"'{repo_id}'"
    if exc.code in (401, 403):
        return DownloadError(
            f"The hub refused {what} (HTTP {exc.code}): the repo is gated or private. Accept its licence "
            "on huggingface.co and log in with `hf auth login`, or download the file by hand."
        )
    if exc.code == 404:
        return DownloadError(f"{what} was not found on the hub (HTTP 404). Check the repo id and file name.")
    return DownloadError(f"The hub answered HTTP {exc.code} for {what}; try again later.")


@dataclass
class _Plan:
    repo_file: str
    target: Path
    size: int | None
    sha256: str | None


def _plan(entry: CatalogEntry, dest_dir: Path, endpoint: str) -> list[_Plan]:
    """Size and hash of every file, from a HEAD per file (the hub's LFS headers) and the catalog."""
    plans = []
    for repo_file in entry.files:
        url = file_url(entry.repo_id, repo_file, entry.revision, endpoint)
        try:
            head = _request(url, method="HEAD", timeout=30.0)
        except urllib.error.HTTPError as exc:
            raise _http_error(exc, entry.repo_id, repo_file) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(f"Could not reach {endpoint} for '{entry.name}': {_reason(exc)}.") from exc
        h = head.headers
        size_text = h.get("x-linked-size") or h.get("content-length")
        # The hub sends an LFS file's sha256 as X-Linked-Etag (ETag on the file itself); a git blob's
        # ETag is a sha1, which the pattern leaves out.
        etag = (h.get("x-linked-etag") or h.get("etag") or "").strip('W/"').lower()
        sha = entry.expected_sha256(repo_file) or (etag if _SHA256.match(etag) else None)
        plans.append(_Plan(repo_file, entry.local_file(dest_dir, repo_file), _int(size_text), sha))
    return plans


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


class _Progress:
    def __init__(self, total: int, on_progress: ProgressFn | None) -> None:
        self.done = 0
        self.total = total
        self._cb = on_progress

    def add(self, n: int) -> None:
        self.done += n
        if self._cb is not None:
            self._cb(self.done, max(self.total, self.done))


def download_entry(
    entry: CatalogEntry,
    dest_dir: Path,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    endpoint: str | None = None,
) -> Path:
    """Download ``entry`` under ``dest_dir``; return its local path (``entry.local_path(dest_dir)``).

    ``on_progress(done_bytes, total_bytes)`` is called after every chunk (1 MiB) from this thread.
    ``should_cancel()`` is polled between chunks; when true, ``Cancelled`` is raised and the partial
    file is kept, so calling again resumes. A dropped connection is resumed here up to 3 times.
    Files already complete are skipped. Raises ``DownloadError`` with the reason.
    """
    if offline_mode():
        raise DownloadError(
            f"Offline mode is on (HF_HUB_OFFLINE), so '{entry.name}' cannot be downloaded. "
            "Turn it off, or add a file you already have."
        )
    endpoint = resolve_endpoint(endpoint)
    dest_dir = Path(dest_dir)
    plans = _plan(entry, dest_dir, endpoint)
    total = sum(p.size if p.size is not None else 0 for p in plans) or entry.size_bytes
    progress = _Progress(total, on_progress)
    for plan in plans:
        if plan.target.is_file() and (plan.size is None or plan.target.stat().st_size == plan.size):
            progress.add(plan.target.stat().st_size)
            continue
        _download_file(entry, plan, endpoint, progress, should_cancel)
    return entry.local_path(dest_dir)


def _hash_file(path: Path, should_cancel: CancelFn | None) -> tuple[int, hashlib._Hash]:
    """(size, sha256 so far) of a partial file, so a resumed download is still checked end to end."""
    hasher = hashlib.sha256()
    n = 0
    if not path.is_file():
        return 0, hasher
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            _check_cancel(should_cancel)
            hasher.update(chunk)
            n += len(chunk)
    return n, hasher


def _check_cancel(should_cancel: CancelFn | None) -> None:
    if should_cancel is not None and should_cancel():
        raise Cancelled("Download cancelled; start it again to continue where it stopped.")


def _download_file(
    entry: CatalogEntry, plan: _Plan, endpoint: str, progress: _Progress, should_cancel: CancelFn | None
) -> None:
    url = file_url(entry.repo_id, plan.repo_file, entry.revision, endpoint)
    plan.target.parent.mkdir(parents=True, exist_ok=True)
    part = plan.target.with_name(plan.target.name + ".part")
    base = progress.done
    have, hasher = _hash_file(part, should_cancel)
    if plan.size is not None and have > plan.size:  # a stale partial of another version of the file
        part.unlink()
        have, hasher = 0, hashlib.sha256()
    progress.add(have)
    failures = 0
    while plan.size is None or have < plan.size:
        try:
            have, hasher = _fetch_into(url, part, have, hasher, progress, should_cancel)
            if plan.size is None:
                break
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and plan.size is not None and have == plan.size:
                break  # the partial file was already complete
            if exc.code < 500 or failures >= RETRIES:
                raise _http_error(exc, entry.repo_id, plan.repo_file) from exc
            failures += 1
        except (OSError, http.client.HTTPException) as exc:
            if failures >= RETRIES:
                kept = part.stat().st_size if part.exists() else 0
                raise DownloadError(
                    f"The download of '{plan.repo_file}' was interrupted {failures + 1} times "
                    f"({_reason(exc)}); the {kept} bytes received are kept. Start it again to resume."
                ) from exc
            failures += 1
        else:
            continue
        # After a failure, trust only what reached the disk: re-read the partial file.
        time.sleep(min(0.25 * 2**failures, 4.0))
        have, hasher = _hash_file(part, should_cancel)
        progress.done = base
        progress.add(have)
    if plan.size is not None and have != plan.size:
        raise DownloadError(f"'{plan.repo_file}' came out {have} bytes long instead of {plan.size}.")
    digest = hasher.hexdigest()
    if plan.sha256 is not None and digest != plan.sha256.lower():
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"'{plan.repo_file}' failed its sha256 check (expected {plan.sha256}, got {digest}); the "
            "damaged download was deleted. Try again; if it keeps failing, the file on the server changed."
        )
    os.replace(part, plan.target)


def _fetch_into(
    url: str,
    part: Path,
    have: int,
    hasher: hashlib._Hash,
    progress: _Progress,
    should_cancel: CancelFn | None,
) -> tuple[int, hashlib._Hash]:
    """One GET from byte ``have``, appended to ``part``. Returns (bytes now in part, hasher).

    Raises ``http.client.IncompleteRead`` when the body ends before its announced length: urllib
    returns a short body silently when a connection drops.
    """
    headers = {"Range": f"bytes={have}-"} if have else {}
    resp = _request(url, headers=headers, timeout=60.0)
    assert resp.body is not None
    with resp.body as body:
        if have and resp.status != 206:
            # The server ignored the range and sends the whole file: start over.
            progress.done -= have
            have, hasher = 0, hashlib.sha256()
        announced = _int(body.headers.get("Content-Length"))
        received = 0
        with part.open("ab" if have else "wb") as f:
            while True:
                _check_cancel(should_cancel)
                chunk = body.read(CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                hasher.update(chunk)
                have += len(chunk)
                received += len(chunk)
                progress.add(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    if announced is not None and received < announced:
        raise http.client.IncompleteRead(b"", announced - received)
    return have, hasher
