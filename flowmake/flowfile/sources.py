"""Where a module's Snakefile comes from: a local path, or a file on a code hosting provider.

``github("owner/repo", path="workflow/Snakefile", tag="v1.0")`` and ``gitlab(...)`` name a file as
Snakemake's markers do; plain ``https://`` URLs work too. ``fetch`` downloads such a file with
urllib into a cache directory (``$XDG_CACHE_HOME/flowmake/sources``, or ``~/.cache/...``) laid out
like the repository, so that an ``include:`` relative to a fetched module is a path next to it
(fetched on demand by ``fetch_relative``). A file pinned by a tag or commit is fetched once and
read from the cache from then on, also offline; a branch is fetched again on each load.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import subprocess
import urllib.error
import urllib.parse
from dataclasses import dataclass

from flowmake.errors import FlowfileError, Location

TIMEOUT_S = 20


@dataclass(frozen=True)
class HostedFile:
    """A file in a repository of a code hosting provider (what ``github()``/``gitlab()`` return)."""

    provider: str  # "github", "gitlab" or "git" (a local repository: ``host`` is its path)
    repo: str
    path: str
    ref: str
    pinned: bool  # a tag or a commit: the content never changes, the cache may answer
    host: str

    def url(self, path: str | None = None) -> str:
        path = self.path if path is None else path
        if self.provider == "git":
            return f"{self.host} ({self.ref}:{path})"
        if self.provider == "github":
            return f"https://raw.githubusercontent.com/{self.repo}/{self.ref}/{path}"
        project = urllib.parse.quote(self.repo, safe="")
        file = urllib.parse.quote(path, safe="")
        return (f"https://{self.host}/api/v4/projects/{project}/repository/files/{file}/raw"
                f"?ref={urllib.parse.quote(self.ref, safe='')}")

    def cache_path(self, root: str, path: str | None = None) -> str:
        path = self.path if path is None else path
        ref = self.ref.replace("/", "_")
        if self.provider == "git":  # a local path: hashed, so that the cache stays flat
            repo = hashlib.sha256(self.host.encode()).hexdigest()[:16]
            return os.path.join(root, "git", repo, ref, *path.split("/"))
        return os.path.join(root, self.provider, self.host, self.repo, ref, *path.split("/"))

    def __fspath__(self) -> str:  # so that str()/os.fspath() of the marker reads sensibly
        return self.url()

    def __str__(self) -> str:
        return self.url()


def _hosted(provider: str, default_host: str, repo: str, path: str, tag: str | None,
            branch: str | None, commit: str | None, host: str | None) -> HostedFile:
    refs = [r for r in (tag, commit, branch) if r]
    if len(refs) != 1:
        raise ValueError(f"{provider}(): give exactly one of tag=, branch= or commit=")
    if "/" not in repo:
        raise ValueError(f"{provider}(): the repository is 'owner/name', got {repo!r}")
    return HostedFile(provider, repo, path.lstrip("/"), refs[0], branch is None, host or default_host)


def github(repo: str, path: str, *, tag: str | None = None, branch: str | None = None,
           commit: str | None = None) -> HostedFile:
    return _hosted("github", "github.com", repo, path, tag, branch, commit, None)


def gitlab(repo: str, path: str, *, tag: str | None = None, branch: str | None = None,
           commit: str | None = None, host: str | None = None) -> HostedFile:
    return _hosted("gitlab", "gitlab.com", repo, path, tag, branch, commit, host)


_SHORTHAND = re.compile(r"(?P<kind>gh|gl):(?:(?P<host>[^/:@]+\.[^/:@]+):)?(?P<repo>[^@:]+/[^@:]+)"
                        r"@(?P<ref>[^:]+)(?::(?P<path>.+))?")
_PINNED_REF = re.compile(r"v?\d+(\.\d+)*([-.+]\w+)?|[0-9a-f]{7,40}")


def shorthand(value: object) -> HostedFile | None:
    """Snakemake's ``gh:owner/repo@ref:path`` / ``gl:[host:]group/project@ref:path`` strings."""
    m = _SHORTHAND.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        return None
    provider = "github" if m["kind"] == "gh" else "gitlab"
    host = m["host"] or ("github.com" if provider == "github" else "gitlab.com")
    # A version-like tag or a commit never changes; anything else may be a branch.
    pinned = _PINNED_REF.fullmatch(m["ref"]) is not None
    return HostedFile(provider, m["repo"], m["path"] or "workflow/Snakefile", m["ref"], pinned, host)


def gitfile(repo_path: str, path: str, *, tag: str | None = None, branch: str | None = None,
            commit: str | None = None) -> HostedFile:
    """Snakemake's ``gitfile()``: a file of a local git repository at a tag, branch or commit."""
    refs = [r for r in (tag, commit, branch) if r]
    if len(refs) != 1:
        raise ValueError("gitfile(): give exactly one of tag=, branch= or commit=")
    return HostedFile("git", "", path.lstrip("/"), refs[0], branch is None,
                      os.path.abspath(os.fspath(repo_path)))


def cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "flowmake", "sources")


def is_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("https://", "http://"))


def fetch(source: HostedFile | str, what: str, where: Location) -> str:
    """The local path of a hosted file or URL, downloading it into the cache when needed."""
    root = cache_root()
    if isinstance(source, HostedFile):
        target, url, pinned = source.cache_path(root), source.url(), source.pinned
    else:
        parsed = urllib.parse.urlsplit(source)
        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
        name = posixpath.basename(parsed.path) or "Snakefile"
        target, url, pinned = os.path.join(root, "url", digest, name), source, False
    if pinned and os.path.isfile(target):
        return target
    if isinstance(source, HostedFile) and source.provider == "git":
        _git_show(source, target, what, where)
    else:
        _download(url, target, what, where)
    return target


def _git_show(source: HostedFile, target: str, what: str, where: Location) -> None:
    try:
        done = subprocess.run(["git", "-C", source.host, "show", f"{source.ref}:{source.path}"],
                              capture_output=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FlowfileError(f"cannot read {what} from {source.url()}: {e}", location=where) from None
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        raise FlowfileError(f"cannot read {what} from {source.url()}: "
                            f"{reason[-1] if reason else 'git failed'}", location=where)
    _write(target, done.stdout)


def _download(url: str, target: str, what: str, where: Location) -> None:
    import urllib.request  # http, ssl, email: imported only when fetching
    request = urllib.request.Request(url)
    token = os.environ.get("GITHUB_TOKEN" if "github" in url else "GITLAB_TOKEN")
    if token:
        request.add_header("Authorization", f"token {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            data = response.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise FlowfileError(f"cannot fetch {what} from {url}: {reason}", location=where,
                            hint="the network is needed once for a hosted module; a tag or "
                            "commit is cached afterwards") from None
    _write(target, data)


def _write(target: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, target)  # readers never see half a file


def fetch_beside(source: HostedFile, current: str, path: str, what: str, where: Location) -> str:
    """A file named relative to ``current`` (a cached file of ``source``'s repository)."""
    repo_root = source.cache_path(cache_root(), "")
    rel = os.path.relpath(os.path.join(os.path.dirname(current), path), repo_root)
    if rel.startswith(".."):
        return os.path.join(os.path.dirname(current), path)
    other = HostedFile(source.provider, source.repo, rel.replace(os.sep, "/"), source.ref,
                       source.pinned, source.host)
    return fetch(other, what, where)
