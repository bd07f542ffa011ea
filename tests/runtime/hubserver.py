"""A small Hugging Face Hub on 127.0.0.1 for the tests (the real one cannot be reached from here): it speaks just
the endpoints huggingface_hub calls to read a repository's files and to push a folder, so the library's own code
runs end to end. docs/data.md and docs/after-training.md list them, and what the real hub does differently.

    GET  /api/{models|datasets}/ORG/NAME[/revision/REV]     repo info (sha, siblings with size, blobId, lfs)
    GET  /api/{models|datasets}/ORG/NAME/tree/REV[/PATH]    the file listing snapshot_download reads
    POST /api/{models|datasets}/ORG/NAME/paths-info/REV     the same for named paths
    HEAD/GET /[datasets/]ORG/NAME/resolve/REV/PATH          a file: X-Repo-Commit, ETag, X-Linked-Etag/-Size, Range
    POST /api/validate-yaml                                 the model card's metadata (YAML, base_model an id)
    POST /api/repos/create                                  a new repository (private or not)
    POST /api/models/ORG/NAME/preupload/REV                 every file goes up inline ("regular"), never by LFS
    POST /api/models/ORG/NAME/commit/REV                    the commit: NDJSON, files base64 inline
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    files: dict[str, bytes] = field(default_factory=dict)
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    private: bool = False
    gated: bool = False
    lfs: set[str] = field(default_factory=set)  # files served as LFS (X-Linked-Etag: their sha256)

    def oid(self, path: str) -> str:
        data = self.files[path]
        if path in self.lfs:
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's blob id


@dataclass
class Hub:
    repos: dict[str, Repo] = field(default_factory=dict)  # "datasets/ORG/NAME" or "models/ORG/NAME"
    requests: list[tuple[str, str, dict]] = field(default_factory=list)  # (method, path, headers)
    commits: list[dict] = field(default_factory=list)  # what pushes sent: {"repo", "header", "files"}
    delay_s: float = 0.0  # per 512 KB of a file download: a slow link, so progress is seen
    cut_after: int | None = None  # bytes of a file download after which the connection drops (once)
    forbidden: set[str] = field(default_factory=set)  # repos this token may not write to (403)
    broken: set[str] = field(default_factory=set)  # files whose download fails (500), every time
    url: str = ""

    def add(self, key: str, files: dict[str, bytes], lfs: tuple[str, ...] = (), **kw) -> Repo:
        repo = Repo(dict(files), lfs=set(lfs), **kw)
        self.repos[key] = repo
        return repo


def _handler(hub: Hub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _send(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, str(v))
            self.send_header("Content-Length", str((headers or {}).get("Content-Length", len(body))))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, obj, code: int = 200, extra: dict | None = None):
            self._send(code, json.dumps(obj).encode(), {"Content-Type": "application/json", **(extra or {})})

        def _error(self, code: int, kind: str, message: str):
            self._json({"error": message}, code, {"X-Error-Code": kind, "X-Error-Message": message})

        def _repo(self, key: str) -> Repo | None:
            repo = hub.repos.get(key)
            if repo is None or (repo.private and "authorization" not in {k.lower() for k in self.headers}):
                self._error(404, "RepoNotFound", f"Repository {key} not found")
                return None
            if repo.gated:
                self._error(403 if "authorization" in {k.lower() for k in self.headers} else 401, "GatedRepo",
                            f"Access to {key} is restricted. You must have access to it and be authenticated.")
                return None
            return repo

        def _entry(self, repo: Repo, path: str) -> dict:
            data = repo.files[path]
            e = {"type": "file", "path": path, "size": len(data), "oid": repo.oid(path) if path not in repo.lfs
                 else hashlib.sha1(b"pointer" + data).hexdigest()}
            if path in repo.lfs:
                e["lfs"] = {"oid": repo.oid(path), "size": len(data), "pointerSize": 130}
            return e

        def _read_body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        # ------------------------------------------------------------------ GET / HEAD
        def do_HEAD(self):
            self._get(head=True)

        def do_GET(self):
            self._get(head=False)

        def _get(self, head: bool):
            hub.requests.append((self.command, self.path, dict(self.headers)))
            path = unquote(urlparse(self.path).path)
            m = re.match(r"^/api/(models|datasets)/([^/]+/[^/]+)(?:/revision/([^/]+))?$", path)
            if m:
                repo = self._repo(f"{m[1]}/{m[2]}")
                if repo is None:
                    return
                if m[3] and m[3] not in ("main", repo.sha):
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {m[3]}")
                siblings = []
                for p in sorted(repo.files):
                    s = {"rfilename": p, "size": len(repo.files[p]), "blobId": self._entry(repo, p)["oid"]}
                    if p in repo.lfs:
                        s["lfs"] = {"sha256": repo.oid(p), "size": len(repo.files[p]), "pointerSize": 130}
                    siblings.append(s)
                return self._json({"id": m[2], "_id": m[2], "sha": repo.sha, "private": repo.private,
                                   "gated": False, "disabled": False, "siblings": siblings, "tags": [],
                                   "lastModified": "2026-01-01T00:00:00.000Z"})
            m = re.match(r"^/api/(models|datasets)/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$", path)
            if m:
                repo = self._repo(f"{m[1]}/{m[2]}")
                if repo is None:
                    return
                under = (m[4] or "").strip("/")
                return self._json([self._entry(repo, p) for p in sorted(repo.files)
                                   if not under or p.startswith(under + "/")])
            m = re.match(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
            if m:
                repo = self._repo(f"{'datasets' if m[1] else 'models'}/{m[2]}")
                if repo is None:
                    return
                file = m[4]
                if file not in repo.files:
                    return self._error(404, "EntryNotFound", f"{file} does not exist")
                if file in hub.broken and not head:
                    return self._error(500, "Internal", "the storage backend failed")
                return self._file(repo, file, head)
            if path == "/api/whoami-v2":
                return self._json({"type": "user", "name": "tester", "auth": {"accessToken": {"role": "write"}}})
            self._error(404, "NotFound", f"{path}: this test hub does not speak it")

        def _file(self, repo: Repo, file: str, head: bool):
            data = repo.files[file]
            start = 0
            rng = self.headers.get("Range")
            if rng:
                start = int(re.match(r"bytes=(\d+)-", rng)[1])
            headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{repo.oid(file)}"', "Accept-Ranges": "bytes",
                       "Content-Type": "application/octet-stream", "Content-Length": len(data) - start}
            if file in repo.lfs:
                headers.update({"X-Linked-Etag": f'"{repo.oid(file)}"', "X-Linked-Size": len(data)})
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            self.send_response(206 if start else 200)
            for k, v in headers.items():
                self.send_header(k, str(v))
            self.end_headers()
            if head:
                return
            sent, chunk = start, 512 * 1024
            while sent < len(data):
                if hub.cut_after is not None and sent >= hub.cut_after:
                    hub.cut_after = None  # once: the next try gets the rest
                    self.close_connection = True
                    return
                piece = data[sent:sent + chunk]
                self.wfile.write(piece)
                self.wfile.flush()
                sent += len(piece)
                time.sleep(hub.delay_s)

        # ------------------------------------------------------------------ POST
        def do_POST(self):
            hub.requests.append((self.command, self.path, dict(self.headers)))
            path = unquote(urlparse(self.path).path)
            body = self._read_body()
            if path == "/api/validate-yaml":  # upload_folder has the model card's metadata checked first
                req = json.loads(body)
                import yaml

                try:
                    meta = yaml.safe_load(req["content"].split("---")[1]) if req["content"].startswith("---") else {}
                except yaml.YAMLError as e:
                    return self._json({"errors": [{"message": str(e)}]}, 400)
                base = (meta or {}).get("base_model")
                if isinstance(base, str) and not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", base):  # as the hub: an id
                    return self._json({"errors": [{"message": f'"base_model" is not a model id: {base}'}]}, 400)
                return self._json({"errors": [], "warnings": []})
            if path == "/api/repos/create":
                req = json.loads(body)
                key = f"{req.get('type', 'model')}s/{req.get('organization') or 'tester'}/{req['name']}"
                if key not in hub.repos:
                    hub.add(key, {}, private=bool(req.get("private")) or req.get("visibility") == "private")
                return self._json({"url": f"{hub.url}/{key.split('/', 1)[1]}", "name": key.split("/", 1)[1]})
            m = re.match(r"^/api/(models|datasets)/([^/]+/[^/]+)/(preupload|commit|paths-info)/([^/]+)$", path)
            if m:
                key = f"{m[1]}/{m[2]}"
                repo = hub.repos.get(key)
                if repo is None:
                    return self._error(404, "RepoNotFound", f"Repository {key} not found")
                if m[3] != "paths-info" and key in hub.forbidden:
                    return self._error(403, "Forbidden", f"You don't have the rights to write to {key}")
                if m[3] == "paths-info":
                    form = dict(p.split("=", 1) for p in body.decode().split("&") if "=" in p) if body else {}
                    paths = json.loads(body).get("paths", []) if body.startswith(b"{") else \
                        [unquote(v) for k, v in form.items() if k == "paths"]
                    return self._json([self._entry(repo, p) for p in paths if p in repo.files])
                if m[3] == "preupload":
                    files = json.loads(body)["files"]
                    return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                                  "oid": None} for f in files]})
                lines = [json.loads(x) for x in body.decode().splitlines() if x.strip()]
                header = next(x["value"] for x in lines if x["key"] == "header")
                files = {x["value"]["path"]: base64.b64decode(x["value"]["content"])
                         for x in lines if x["key"] == "file"}
                repo.files.update(files)
                repo.sha = hashlib.sha1(repr(sorted(repo.files)).encode() + str(len(hub.commits)).encode()).hexdigest()
                hub.commits.append({"repo": key, "header": header, "files": files})
                return self._json({"commitUrl": f"{hub.url}/{m[2]}/commit/{repo.sha}", "commitOid": repo.sha,
                                   "pullRequestUrl": None})
            self._error(404, "NotFound", f"{path}: this test hub does not speak it")

    return Handler


class HubServer:
    """`with HubServer() as hub:` a Hub served on 127.0.0.1 (hub.url), in a thread."""

    def __init__(self):
        self.hub = Hub()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.hub))
        self.server.daemon_threads = True
        self.hub.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Hub:
        self.thread.start()
        return self.hub

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
