"""A local stand-in for the HF Hub and ModelScope upload APIs (stdlib http.server, threaded, on 127.0.0.1).

It speaks just the endpoints that huggingface_hub 2.4 (create_repo, upload_folder without hf_xet) and
modelscope_hub 0.5 (whoami, create_repo, upload_folder) call, read from their sources:

HF Hub (huggingface_hub/hf_api.py, _commit_api.py, lfs.py):
  POST /api/repos/create                              {name, organization, visibility}
  GET  /api/models/{repo_id}                          repo_info (create_repo's exist_ok path after a 401/403)
  POST /api/validate-yaml                             README.md front matter check
  POST /api/models/{repo_id}/preupload/{rev}          -> uploadMode "lfs" | "regular" per file
  POST /{repo_id}.git/info/lfs/objects/batch          -> one basic-transfer upload href per object
  PUT  /__lfs/{oid}                                   the LFS object (no auth, like a presigned URL)
  POST /api/models/{repo_id}/commit/{rev}             ndjson: header, file (base64), lfsFile (oid)
ModelScope (modelscope_hub/api.py, _legacy_api.py, _upload.py, _openapi.py):
  GET  /openapi/v1/users/me                           whoami
  POST /api/v1/models                                 {Path, Name, Visibility (1 private, 5 public), License}
  POST /api/v1/repos/models/{repo_id}/info/lfs/objects/batch  -> {Data: {objects: [{oid, actions.upload.href}]}}
  PUT  /__mslfs/{oid}                                 the blob (the client sends its Bearer token here too)
  POST /api/v1/repos/models/{repo_id}/commit/{rev}    {commit_message, actions: [{path, type, content|sha256}]}

Every request's Authorization header is recorded (a wrong one gets the hub's 401), and so is any request that
carries the token in its URL or body.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

# What the HF Hub's default .gitattributes sends to LFS (a subset), and its size rule (10 MB).
HF_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".onnx", ".zip", ".gz")
HF_LFS_MIN_SIZE = 10 * 1024 * 1024
USERNAME = "fake-user"


@dataclass
class Repo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: int = 0


@dataclass
class FakeHub:
    """Server state: repos, LFS objects, the Authorization headers received, and which uploads went via LFS."""

    token: str
    repos: dict[str, Repo] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    lfs_paths: set[str] = field(default_factory=set)
    authorizations: list[tuple[str, str | None]] = field(default_factory=list)  # (path, header)
    create_bodies: list[dict] = field(default_factory=list)
    token_in_url_or_body: list[str] = field(default_factory=list)  # request paths
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            state = hub

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    state: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep the test output clean
        pass

    # -- plumbing -------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, payload=None, headers: dict | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self, path: str, *, modelscope: bool) -> bool:
        header = self.headers.get("Authorization")
        with self.state.lock:
            self.state.authorizations.append((path, header))
        if header == f"Bearer {self.state.token}":
            return True
        if modelscope:
            self._send(401, {"Code": 10010101, "Message": "Unauthorized: invalid token", "Success": False})
        else:
            self._send(401, {"error": "Invalid credentials in Authorization header"},
                       {"X-Error-Message": "Invalid credentials in Authorization header"})
        return False

    def _dispatch(self, method: str) -> None:
        path = unquote(urlsplit(self.path).path)
        body = self._body() if method in ("POST", "PUT") else b""
        if self.state.token in self.path or self.state.token.encode() in body:
            with self.state.lock:
                self.state.token_in_url_or_body.append(path)
        routes = HF_ROUTES if not path.startswith(("/api/v1/", "/openapi/", "/__mslfs/")) else MS_ROUTES
        for route_method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if route_method == method and match:
                return handler(self, body, **match.groupdict())
        self._send(404, {"error": f"fake hub: no route {method} {path}"})

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    # -- HF Hub ----------------------------------------------------------------------------------------
    def hf_create(self, body: bytes) -> None:
        if not self._authorized(self.path, modelscope=False):
            return
        payload = json.loads(body)
        self.state.create_bodies.append(payload)
        repo_id = f"{payload.get('organization') or USERNAME}/{payload['name']}"
        url = f"{self.state.url}/{repo_id}"
        with self.state.lock:
            if repo_id in self.state.repos:
                return self._send(409, {"error": "You already created this model repo", "url": url})
            self.state.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def hf_repo_info(self, body: bytes, repo_id: str) -> None:
        if not self._authorized(self.path, modelscope=False):
            return
        if repo_id not in self.state.repos:
            return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        self._send(200, {"id": repo_id, "modelId": repo_id, "sha": "0" * 40, "private": self.state.repos[
            repo_id].private, "siblings": []})

    def hf_validate_yaml(self, body: bytes) -> None:
        import yaml

        if not self._authorized(self.path, modelscope=False):
            return
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, re.DOTALL)
        try:
            if match:
                yaml.safe_load(match.group(1))
        except yaml.YAMLError as e:
            return self._send(400, {"errors": [{"message": f"invalid YAML: {e}"}], "warnings": []})
        self._send(200, {"errors": [], "warnings": []})

    def hf_preupload(self, body: bytes, repo_id: str, rev: str) -> None:
        if not self._authorized(self.path, modelscope=False):
            return
        files = [{"path": f["path"], "shouldIgnore": False, "oid": None,
                  "uploadMode": "lfs" if f["path"].endswith(HF_LFS_SUFFIXES) or f["size"] >= HF_LFS_MIN_SIZE
                  else "regular"} for f in json.loads(body)["files"]]
        self._send(200, {"files": files, "commitOid": "0" * 40})

    def hf_lfs_batch(self, body: bytes, repo_id: str) -> None:
        if not self._authorized(self.path, modelscope=False):
            return
        objects = [{"oid": o["oid"], "size": o["size"], "authenticated": True,
                    "actions": {"upload": {"href": f"{self.state.url}/__lfs/{o['oid']}"}}}
                   for o in json.loads(body)["objects"]]
        self._send(200, {"transfer": "basic", "objects": objects})

    def hf_lfs_put(self, body: bytes, oid: str) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            return self._send(400, {"error": "sha256 mismatch"})
        with self.state.lock:
            self.state.blobs[oid] = body
        self._send(200)

    def hf_commit(self, body: bytes, repo_id: str, rev: str) -> None:
        if not self._authorized(self.path, modelscope=False):
            return
        repo = self.state.repos.get(repo_id)
        if repo is None:
            return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        for line in body.splitlines():
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "file":
                repo.files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                blob = self.state.blobs.get(value["oid"])
                if blob is None or len(blob) != value["size"]:
                    return self._send(422, {"error": f"LFS object of {value['path']} was never uploaded"})
                repo.files[value["path"]] = blob
                self.state.lfs_paths.add(value["path"])
        repo.commits += 1
        self._send(200, {"commitUrl": f"{self.state.url}/{repo_id}/commit/{'1' * 40}", "commitOid": "1" * 40,
                         "pullRequestUrl": None})

    # -- ModelScope ------------------------------------------------------------------------------------
    def ms_whoami(self, body: bytes) -> None:
        if self._authorized(self.path, modelscope=True):
            self._send(200, {"success": True, "data": {"username": USERNAME, "email": "fake@example.com"}})

    def ms_create(self, body: bytes) -> None:
        if not self._authorized(self.path, modelscope=True):
            return
        payload = json.loads(body)
        self.state.create_bodies.append(payload)
        repo_id = f"{payload['Path']}/{payload['Name']}"
        with self.state.lock:
            if repo_id in self.state.repos:
                return self._send(400, {"Code": 10020101, "Message": "model already exists", "Success": False})
            self.state.repos[repo_id] = Repo(private=payload["Visibility"] == 1)
        self._send(200, {"Code": 200, "Data": {"Path": payload["Path"], "Name": payload["Name"],
                                               "Visibility": payload["Visibility"]}, "Success": True})

    def ms_lfs_batch(self, body: bytes, repo_id: str) -> None:
        if not self._authorized(self.path, modelscope=True):
            return
        objects = [{"oid": o["oid"], "size": o["size"],
                    "actions": {"upload": {"href": f"{self.state.url}/__mslfs/{o['oid']}"}}}
                   for o in json.loads(body)["objects"]]
        self._send(200, {"Code": 200, "Data": {"objects": objects}, "Success": True})

    def ms_blob_put(self, body: bytes, oid: str) -> None:
        if not self._authorized(self.path, modelscope=True):
            return
        if hashlib.sha256(body).hexdigest() != oid:
            return self._send(400, {"Code": 400, "Message": "sha256 mismatch", "Success": False})
        with self.state.lock:
            self.state.blobs[oid] = body
        self._send(200, {"Code": 200, "Success": True})

    def ms_commit(self, body: bytes, repo_id: str, rev: str) -> None:
        if not self._authorized(self.path, modelscope=True):
            return
        repo = self.state.repos.get(repo_id)
        if repo is None:
            return self._send(404, {"Code": 404, "Message": "repo not found", "Success": False})
        for action in json.loads(body)["actions"]:
            if action["type"] == "lfs":
                blob = self.state.blobs.get(action["sha256"])
                if blob is None or len(blob) != action["size"]:
                    return self._send(400, {"Code": 400, "Message": f"blob of {action['path']} missing",
                                            "Success": False})
                repo.files[action["path"]] = blob
                self.state.lfs_paths.add(action["path"])
            else:
                repo.files[action["path"]] = base64.b64decode(action["content"])
        repo.commits += 1
        self._send(200, {"Code": 200, "Data": {"CommitId": "1" * 40}, "Success": True})


_REPO = r"(?P<repo_id>[^/]+/[^/]+)"
HF_ROUTES = [
    ("POST", r"/api/repos/create", _Handler.hf_create),
    ("POST", r"/api/validate-yaml", _Handler.hf_validate_yaml),
    ("GET", rf"/api/models/{_REPO}", _Handler.hf_repo_info),
    ("POST", rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", _Handler.hf_preupload),
    ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", _Handler.hf_lfs_batch),
    ("PUT", r"/__lfs/(?P<oid>[0-9a-f]{64})", _Handler.hf_lfs_put),
    ("POST", rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", _Handler.hf_commit),
]
MS_ROUTES = [
    ("GET", r"/openapi/v1/users/me", _Handler.ms_whoami),
    ("POST", r"/api/v1/models", _Handler.ms_create),
    ("POST", rf"/api/v1/repos/models/{_REPO}/info/lfs/objects/batch", _Handler.ms_lfs_batch),
    ("PUT", r"/__mslfs/(?P<oid>[0-9a-f]{64})", _Handler.ms_blob_put),
    ("POST", rf"/api/v1/repos/models/{_REPO}/commit/(?P<rev>[^/]+)", _Handler.ms_commit),
]
