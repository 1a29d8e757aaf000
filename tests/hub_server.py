"""A minimal Hub-compatible HTTP server for tests: the endpoints ``huggingface_hub``'s client calls to create a
repository, upload a folder and download it again.

- ``POST /api/repos/create``: ``{"name", "organization"}`` -> ``{"url"}`` (409 with the url if it exists);
- ``POST /api/validate-yaml``: parses the card's metadata with ``huggingface_hub`` (400 with ``errors`` if invalid);
- ``POST /api/models/{repo}/preupload/{rev}``: every file is uploaded ``"regular"`` (base64 in the commit), so
  neither LFS nor Xet storage is needed;
- ``POST /api/models/{repo}/commit/{rev}``: the ndjson commit (``header``, ``file``, ``deletedFile``) on branch
  ``rev`` (404 ``RevisionNotFound`` for a branch that does not exist, as on the Hub);
- ``POST /api/models/{repo}/branch/{branch}``: a branch from ``startingPoint`` or main's head (409 if it exists);
- ``GET /api/models/{repo}[/revision/{rev}]``: id, sha, siblings; ``GET /api/models/{repo}/tree/{rev}``: files;
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``: the file with ``X-Repo-Commit``, ``ETag`` (git blob sha1) and
  ``Content-Length``.

Files of each repository's latest commit on main are also written under ``storage`` (those of another branch under
``storage/<org>/<name>@<branch>``, so tests can search them), and the
``Authorization`` headers received are kept in memory (``auth_headers``), never on disk.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

REPO = r"(?P<repo>[^/]+/[^/]+)"
API_REPO = re.compile(
    rf"^/api/models/{REPO}(?:/(?P<action>preupload|commit|revision|tree|branch)/(?P<rev>[^/]+)(?P<rest>/.*)?)?$"
)
RESOLVE = re.compile(rf"^/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


def git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class HubState:
    """Repositories: ``{repo_id: {"head": sha, "branches": {name: sha}, "commits": {sha: {path: bytes}}}}`` (``head``
    is main's, ``branches`` the others), mirrored under ``storage``."""

    def __init__(self, storage: Path):
        self.storage = storage
        self.repos: dict[str, dict] = {}
        self.auth_headers: list[str] = []
        self.requests: list[str] = []
        self.lock = threading.Lock()

    def files(self, repo_id: str, rev: str) -> tuple[str, dict[str, bytes]] | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None
        sha = repo["head"] if rev in ("main", repo["head"]) else repo["branches"].get(rev, rev)
        if sha not in repo["commits"]:
            return None
        return sha, repo["commits"][sha]

    def commit(
        self, repo_id: str, additions: dict[str, bytes], deletions: list[str], summary: str, branch: str = "main"
    ) -> str:
        repo = self.repos[repo_id]
        parent = repo["head"] if branch == "main" else repo["branches"][branch]
        files = dict(repo["commits"][parent])
        for path in deletions:
            files = {p: c for p, c in files.items() if p != path and not p.startswith(path.rstrip("/") + "/")}
        files.update(additions)
        sha = hashlib.sha1(f"{parent}{summary}{sorted(files)}{len(repo['commits'])}".encode()).hexdigest()
        repo["commits"][sha] = files
        if branch == "main":
            repo["head"] = sha
            self._mirror(repo_id, files)
        else:
            repo["branches"][branch] = sha
            self._mirror(f"{repo_id}@{branch}", files)
        return sha

    def has_branch(self, repo_id: str, branch: str) -> bool:
        return branch == "main" or branch in self.repos[repo_id]["branches"]

    def _mirror(self, repo_id: str, files: dict[str, bytes]) -> None:
        root = self.storage / repo_id
        shutil.rmtree(root, ignore_errors=True)  # files deleted by the commit go too
        for path, content in files.items():
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)


def _handler(state: HubState):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # quiet
            pass

        # ---------------------------------------------------------------- helpers
        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head and self.command != "HEAD":  # no body in an answer to HEAD, errors included
                self.wfile.write(body)

        def _json(self, status: int, payload, headers: dict | None = None) -> None:
            self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _not_found(self, what: str = "Repository not found") -> None:
            code = "RepoNotFound" if what.startswith("Repository") else "EntryNotFound"
            self._json(404, {"error": what}, {"X-Error-Code": code, "X-Error-Message": what})

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _record(self) -> None:
            with state.lock:
                state.requests.append(f"{self.command} {self.path}")
                if self.headers.get("Authorization"):
                    state.auth_headers.append(self.headers["Authorization"])

        @property
        def base(self) -> str:
            host, port = self.server.server_address[:2]
            return f"http://{host}:{port}"

        # ---------------------------------------------------------------- verbs
        def do_POST(self):
            self._record()
            path = urlparse(self.path).path
            body = self._body()
            if path == "/api/repos/create":
                return self._create(json.loads(body))
            if path == "/api/validate-yaml":
                return self._validate_yaml(json.loads(body))
            match = API_REPO.match(path)
            if not match or match["action"] not in ("preupload", "commit", "branch"):
                return self._not_found()
            repo_id = unquote(match["repo"])
            if repo_id not in state.repos:
                return self._not_found()
            rev = unquote(match["rev"])
            if match["action"] == "branch":
                return self._branch(repo_id, rev, json.loads(body or b"{}"))
            if not state.has_branch(repo_id, rev):
                message = f"Invalid rev id: {rev}"
                return self._json(
                    404, {"error": message}, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": message}
                )
            if match["action"] == "preupload":
                found = state.files(repo_id, rev)
                existing = found[1] if found else {}
                files = [
                    {
                        "path": f["path"],
                        "uploadMode": "regular",
                        "shouldIgnore": False,
                        "oid": git_blob_sha1(existing[f["path"]]) if f["path"] in existing else None,
                    }
                    for f in json.loads(body)["files"]
                ]
                return self._json(200, {"files": files, "commitOid": state.repos[repo_id]["head"]})
            return self._commit(repo_id, body, rev)

        def do_GET(self):
            self._record()
            self._get(head=False)

        def do_HEAD(self):
            self._record()
            self._get(head=True)

        # ---------------------------------------------------------------- endpoints
        def _create(self, payload: dict) -> None:
            repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
            url = {"url": f"{self.base}/{repo_id}"}
            with state.lock:
                if repo_id in state.repos:
                    return self._json(409, {"error": "You already created this model repo", **url})
                empty = hashlib.sha1(repo_id.encode()).hexdigest()
                state.repos[repo_id] = {
                    "head": empty,
                    "branches": {},
                    "commits": {empty: {}},
                    "private": payload.get("private"),
                }
            self._json(200, url)

        def _branch(self, repo_id: str, branch: str, payload: dict) -> None:
            with state.lock:
                if state.has_branch(repo_id, branch):
                    return self._json(409, {"error": f"Reference already exists: refs/heads/{branch}"})
                found = state.files(repo_id, payload.get("startingPoint") or "main")
                if found is None:
                    return self._not_found("Revision not found")
                state.repos[repo_id]["branches"][branch] = found[0]
            self._json(200, {})

        def _validate_yaml(self, payload: dict) -> None:
            from huggingface_hub import ModelCard

            try:
                ModelCard(payload["content"])
            except Exception as error:  # noqa: BLE001 - every parse failure is a validation error
                return self._json(400, {"errors": [{"message": str(error)}]})
            self._json(200, {"warnings": []})

        def _commit(self, repo_id: str, body: bytes, branch: str) -> None:
            additions: dict[str, bytes] = {}
            deletions: list[str] = []
            summary = ""
            for line in body.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "header":
                    summary = value.get("summary", "")
                elif item["key"] == "file":
                    content = value["content"]
                    additions[value["path"]] = (
                        base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                    )
                elif item["key"] in ("deletedFile", "deletedFolder"):
                    deletions.append(value["path"])
                else:
                    return self._json(400, {"error": f"unsupported commit operation {item['key']}"})
            with state.lock:
                sha = state.commit(repo_id, additions, deletions, summary, branch)
            self._json(200, {"commitUrl": f"{self.base}/{repo_id}/commit/{sha}", "commitOid": sha, "success": True})

        def _get(self, head: bool) -> None:
            path = urlparse(self.path).path
            match = API_REPO.match(path)
            if match and match["action"] in (None, "revision"):
                found = state.files(unquote(match["repo"]), unquote(match["rev"] or "main"))
                if found is None:
                    return self._not_found()
                sha, files = found
                siblings = [
                    {"rfilename": p, "size": len(c), "blobId": git_blob_sha1(c)} for p, c in sorted(files.items())
                ]
                payload = {"id": unquote(match["repo"]), "sha": sha, "siblings": siblings, "private": False, "tags": []}
                return self._json(200, payload)
            if match and match["action"] == "tree":
                found = state.files(unquote(match["repo"]), unquote(match["rev"]))
                if found is None:
                    return self._not_found()
                prefix = unquote(match["rest"] or "").strip("/")
                entries, folders = [], set()
                for file_path, content in sorted(found[1].items()):
                    if prefix and not file_path.startswith(prefix + "/"):
                        continue
                    entries.append(
                        {"type": "file", "path": file_path, "size": len(content), "oid": git_blob_sha1(content)}
                    )
                    parts = file_path.split("/")[:-1]
                    folders.update("/".join(parts[: i + 1]) for i in range(len(parts)))
                entries += [
                    {"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest()} for f in folders
                ]
                return self._json(200, entries)
            match = RESOLVE.match(path)
            if match:
                found = state.files(unquote(match["repo"]), unquote(match["rev"]))
                if found is None:
                    return self._not_found()
                sha, files = found
                file_path = unquote(match["path"])
                if file_path not in files:
                    return self._not_found("Entry not found")
                content = files[file_path]
                headers = {
                    "X-Repo-Commit": sha,
                    "ETag": f'"{git_blob_sha1(content)}"',
                    "Content-Type": "application/octet-stream",
                }
                return self._send(200, content, headers, head=head)
            self._not_found()

    return Handler


class LocalHub:
    """Run the server in a thread: ``with LocalHub(tmp_path) as hub: ... hub.url ...``."""

    def __init__(self, storage: str | Path):
        self.state = HubState(Path(storage))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> LocalHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
