"""Storage files: objects in S3 used as a rule's inputs and outputs, Snakemake 9's ``storage``.

A rule names an object with ``storage.s3("s3://bucket/key")``, ``storage("s3://bucket/key")`` (the
provider inferred from the scheme) or ``storage.NAME(...)`` for a provider registered with
``storage NAME: provider="s3", endpoint_url=...``; with ``--default-storage-provider s3
--default-storage-prefix s3://bucket/prefix`` every relative input and output not marked
``local()`` is the object under the prefix. What the rule, the graph and the job see is the
object's local path, ``.flowmake/storage/<provider name>/<bucket>/<key>`` (Snakemake's
``.snakemake/storage/...``). The mapping is a pure function both ways, so patterns and wildcards
work on local paths unchanged and any path under the root names its object: nothing else records
which paths are remote.

At run time ``Storage`` answers for those paths where the filesystem answers for the others: the
graph asks ``exists``, the planner ``digest`` (through ``Facts``, as it asks the digester), the
scheduler ``fetch``es a step's remote inputs before its job and ``upload``s its remote outputs
after it (``flowmake.storage_s3`` talks to the server). Only S3 is built; any other provider is a
Flowfile error naming it and the line.
"""

from __future__ import annotations

import posixpath
import re
import stat as statmod
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from flowmake.digest import Stat
from flowmake.errors import FlowfileError, Location, UsageError, did_you_mean
from flowmake.namedlist import Flag, Flagged, FlaggedFunction, flags_of

if TYPE_CHECKING:
    from flowmake.digest import Digester
    from flowmake.graph import Step
    from flowmake.storage_s3 import S3Objects

LOCAL_ROOT = ".flowmake/storage"
_PREFIX = LOCAL_ROOT + "/"
SUPPORTED = ("s3",)
# Snakemake's storage plugins by the schemes their queries use: named in the error, not built.
_SCHEMES = {"s3": "s3", "gs": "gcs", "gcs": "gcs", "http": "http", "https": "http", "ftp": "ftp",
            "ftps": "ftp", "sftp": "sftp", "az": "azure", "abfs": "azure", "file": "fs",
            "root": "xrootd", "irods": "irods", "webdav": "webdav", "davs": "webdav"}
_OTHER_PROVIDERS = ("gcs", "http", "ftp", "sftp", "azure", "fs", "xrootd", "irods", "webdav",
                    "zenodo", "s3express", "pelican")
# What a provider may be given, in the directive or in flowmake.toml's [storage.NAME].
SETTINGS = ("endpoint_url", "region", "profile", "retries")
# Snakemake's s3 settings that change nothing here (objects are always kept locally: they are
# the digest cache's other half; requests are not throttled).
_NO_EFFECT = ("keep_local", "retrieve", "max_requests_per_second", "signature_version", "is_default")
_CREDENTIALS = ("access_key", "secret_key", "token", "session_token", "aws_access_key_id",
                "aws_secret_access_key", "aws_session_token")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_URL = re.compile(r"s3://([^/]*)(?:/(.*))?", re.S)


@dataclass(frozen=True)
class Provider:
    """A registered storage provider: ``name`` is its tag (or ``s3``), what local paths carry."""

    name: str
    kind: str = "s3"
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Remote:
    """The object behind a local path."""

    provider: Provider
    bucket: str
    key: str
    local: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def local_path(name: str, bucket: str, key: str) -> str:
    return f"{_PREFIX}{name}/{bucket}/{key}"


def parse_url(query: Any, *, prefix: bool = False) -> tuple[str, str]:
    """(bucket, key) of ``s3://bucket/key``; ValueError saying what is wrong. With ``prefix`` the
    key may be empty and may end in '/' (a ``--default-storage-prefix``)."""
    if not isinstance(query, str):
        raise ValueError(f"a storage query must be a string, got {type(query).__name__}")
    m = _URL.fullmatch(query)
    if m is None:
        raise ValueError(f"'{query}' is not an S3 URL (s3://bucket/key)")
    bucket, key = m.group(1), m.group(2) or ""
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f"'{query}': '{bucket}' is not a valid bucket name "
                         "(3 to 63 of a-z, 0-9, '.', '-')")
    if prefix:
        key = key.rstrip("/")
        if not key:
            return bucket, ""
    elif not key:
        raise ValueError(f"'{query}' names a bucket but no object (s3://{bucket}/KEY)")
    # Each key maps to one local path and back: no segment that a path would fold away.
    if any(part in ("", ".", "..") for part in key.split("/")) or not key.isprintable():
        raise ValueError(f"'{query}': the key has an empty, '.' or '..' segment or a control "
                         "character, which no local path can stand for")
    return bucket, key


class _ProviderProxy:
    """``storage.NAME``: call it with a query."""

    def __init__(self, registry: StorageRegistry, name: str) -> None:
        self._registry, self._name = registry, name

    def __call__(self, query: Any, **kwargs: Any) -> Any:
        return self._registry._object(query, self._name, kwargs)


class StorageRegistry:
    """The rule file's ``storage`` object, and the workflow's registered providers.

    Errors raised from here carry no location: the builder adds the rule file's line that made
    the call (or passes the directive's line in).
    """

    def __init__(self, default: tuple[str, str] | None = None) -> None:
        self._providers: dict[str, Provider] = {}
        self._default: tuple[Provider, str] | None = None
        if default is not None:
            self._default = self._default_of(*default)

    # -- the rule file's view ---------------------------------------------------------------

    def __getattr__(self, name: str) -> _ProviderProxy:
        if name.startswith("_"):  # copy, pickle and our own attributes: never a provider
            raise AttributeError(name)
        return _ProviderProxy(self, name)

    def __call__(self, query: Any, **kwargs: Any) -> Any:
        if isinstance(query, (list, tuple)):
            return [self(q, **kwargs) for q in query]
        scheme = query.split("://", 1)[0] if isinstance(query, str) and "://" in query else None
        if scheme is None:
            raise FlowfileError(f"storage({query!r}): no provider can be inferred without a scheme",
                                hint="write s3://bucket/key, or name the provider: storage.s3(...)")
        kind = _SCHEMES.get(scheme.lower())
        if kind is None:
            raise FlowfileError(f"storage({query!r}): no storage provider for the scheme '{scheme}://'",
                                hint="flowmake supports s3://")
        return self._object(query, kind, kwargs)

    def register(self, where: Location, tag: str | None, provider: Any = None, **settings: Any) -> None:
        """The ``storage:`` / ``storage NAME:`` directive."""
        if provider is None:
            raise FlowfileError('storage: needs the provider (provider="s3")', location=where)
        kind = _kind(provider, where)
        name = tag or kind
        self._providers[name] = Provider(name, kind, check_settings(settings, where))

    def _object(self, query: Any, name: str, kwargs: Mapping[str, Any]) -> Any:
        if isinstance(query, (list, tuple)):
            return [self._object(q, name, kwargs) for q in query]
        provider = self._providers.get(name)
        if provider is None:
            if name not in SUPPORTED and name not in _OTHER_PROVIDERS:
                raise FlowfileError(f"no storage provider named '{name}'",
                                    hint=did_you_mean(name, [*self._providers, *SUPPORTED])
                                    or f'register it with: storage {name}: provider="s3"')
            provider = self._providers[name] = Provider(name, _kind(name, None))
        check_settings({k: v for k, v in kwargs.items()}, None)
        try:
            bucket, key = parse_url(query)
        except ValueError as e:
            raise FlowfileError(f"storage.{name}: {e}") from None
        path, flags = local_path(provider.name, bucket, key), flags_of(query)
        return Flagged(path, flags) if flags else path

    # -- default storage (--default-storage-provider) -----------------------------------------

    def _default_of(self, kind: str, prefix: str | None) -> tuple[Provider, str]:
        if kind not in SUPPORTED:
            known = "s3" if kind in _OTHER_PROVIDERS else None
            raise UsageError(f"--default-storage-provider {kind}: flowmake supports only s3",
                             hint=None if known else did_you_mean(kind, SUPPORTED))
        if not prefix:
            raise UsageError("--default-storage-provider s3 needs --default-storage-prefix s3://bucket/prefix")
        try:
            bucket, key = parse_url(prefix, prefix=True)
        except ValueError as e:
            raise UsageError(f"--default-storage-prefix: {e}") from None
        return Provider(kind), f"{bucket}/{key}" if key else bucket

    def map_default(self, value: Any) -> Any:
        """An input or output as the default storage provider has it: every relative path that is
        not ``local()`` and not already a storage path becomes the object under the prefix, in
        lists, dicts and the results of input functions too (Snakemake's path modifier)."""
        if self._default is None:
            return value
        if isinstance(value, FlaggedFunction):
            return FlaggedFunction(self._mapped_function(value.func), value.flags, value.unpack)
        if callable(value) and not isinstance(value, str):
            return self._mapped_function(value)
        if isinstance(value, dict):
            return {k: self.map_default(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.map_default(v) for v in value]
        if not isinstance(value, str):
            return value
        flags = flags_of(value)
        path = str(value)
        if Flag.LOCAL in flags or path.startswith(_PREFIX) or posixpath.isabs(path) or path.startswith(".."):
            return value
        provider, base = self._default
        mapped = f"{_PREFIX}{provider.name}/{base}/{posixpath.normpath(path)}"
        return Flagged(mapped, flags) if flags else mapped

    def _mapped_function(self, func: Callable[..., Any]) -> Callable[..., Any]:
        def mapped(*args: Any, **kwargs: Any) -> Any:
            return self.map_default(func(*args, **kwargs))

        return mapped

    # -- run time -----------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return bool(self._providers) or self._default is not None

    def remote(self, path: str) -> Remote | None:
        """The object behind a local path, or None for a local file."""
        if not path.startswith(_PREFIX):
            return None
        parts = path[len(_PREFIX):].split("/", 2)
        if len(parts) < 3:
            return None
        name, bucket, key = parts
        provider = self._providers.get(name)
        if provider is None and self._default is not None and self._default[0].name == name:
            provider = self._default[0]
        if provider is None:
            return None
        return Remote(provider, bucket, key, path)

    def configured(self, toml: Mapping[str, Mapping[str, Any]]) -> StorageRegistry:
        """The providers with flowmake.toml's ``[storage.KIND]`` and ``[storage.NAME]`` settings
        under the directive's own (the directive's win, as Snakemake's do over its flags)."""
        out = StorageRegistry()
        out._default = self._default
        for name, p in self._providers.items():
            where = Location("flowmake.toml")
            base = {**check_settings(dict(toml.get(p.kind, {})), where),
                    **(check_settings(dict(toml.get(name, {})), where) if name != p.kind else {})}
            out._providers[name] = replace(p, settings={**base, **p.settings})
        if out._default is not None and out._default[0].name not in out._providers:
            p = out._default[0]
            out._providers[p.name] = replace(p, settings=check_settings(dict(toml.get(p.kind, {})),
                                                                       Location("flowmake.toml")))
        return out


def _kind(provider: Any, where: Location | None) -> str:
    if not isinstance(provider, str) or provider != provider.lower():
        raise FlowfileError(f"storage provider must be a lowercase name, got {provider!r}", location=where)
    if provider not in SUPPORTED:
        hint = "flowmake supports: " + ", ".join(SUPPORTED)
        raise FlowfileError(f"storage provider '{provider}' is not supported", location=where,
                            hint=hint if provider in _OTHER_PROVIDERS else did_you_mean(provider, SUPPORTED) or hint)
    return provider


def check_settings(settings: Mapping[str, Any], where: Location | None) -> dict[str, Any]:
    """The settings that mean something here; credentials are refused (the standard AWS chain
    provides them: environment, ~/.aws, the instance's role), unknown names are errors."""
    out: dict[str, Any] = {}
    for k, v in settings.items():
        if k in _CREDENTIALS:
            raise FlowfileError(f"storage setting '{k}': credentials are not taken from rule files or settings",
                                location=where, hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, use "
                                "~/.aws/credentials (profile=...) or an instance role")
        if k in _NO_EFFECT:
            continue
        if k not in SETTINGS:
            raise FlowfileError(f"unknown storage setting '{k}'", location=where,
                                hint=did_you_mean(k, [*SETTINGS, *_NO_EFFECT]))
        if k == "retries" and (isinstance(v, bool) or not isinstance(v, int)):
            raise FlowfileError(f"storage setting 'retries' must be an integer, got {v!r}", location=where)
        if k != "retries" and not isinstance(v, str):
            raise FlowfileError(f"storage setting '{k}' must be a string, got {v!r}", location=where)
        out[k] = v
    return out


class Storage:
    """One invocation's view of the objects behind storage paths (see the module docstring).

    ``digest`` of an object is the BLAKE3 digest of its content, like a local file's, so traces,
    early cutoff and the local copy's digest all agree. It is found without reading the object
    when possible: the digest flowmake wrote into the object's metadata when it uploaded it, or
    the one recorded for the object's (ETag, size, Last-Modified); otherwise the object is
    downloaded to its local path and hashed, once (a dry run never downloads: it keys an unknown
    object by that identity, so it is shown as changed). Each object costs one HEAD per
    invocation, whatever asks.
    """

    def __init__(self, registry: StorageRegistry, objects: S3Objects, digester: Digester,
                 *, readonly: bool) -> None:
        self.registry = registry
        self.objects = objects
        self.digester = digester
        self.readonly = readonly

    def remote(self, path: str) -> Remote | None:
        return self.registry.remote(path)

    def objects_named(self, text: str) -> list[str]:
        """"PATH is s3://bucket/key" for each storage path an error message names."""
        out = []
        for m in re.finditer(re.escape(_PREFIX) + r"[^\s'\"]+", text):
            r = self.registry.remote(m.group(0))
            if r is not None and f"{r.local} is {r.url}" not in out:
                out.append(f"{r.local} is {r.url}")
        return out

    def prefetch(self, paths: Iterable[str]) -> None:
        """Ask the server about the objects behind ``paths`` at once, before planning asks one by one."""
        self.objects.prefetch(r for r in map(self.registry.remote, paths) if r is not None)

    def exists(self, path: str) -> bool:
        r = self.registry.remote(path)
        return self.digester.stat(path) is not None if r is None else self.objects.head(r) is not None

    def digest(self, path: str) -> str | None:
        r = self.registry.remote(path)
        if r is None:
            return self.digester.digest(path)
        return self.objects.digest(r, self.digester, download=not self.readonly)

    def exists_fn(self, local: Callable[[str], bool]) -> Callable[[str], bool]:
        remote = self.registry.remote

        def exists(path: str) -> bool:
            return local(path) if not path.startswith(_PREFIX) or remote(path) is None else self.exists(path)

        return exists

    def stat_fn(self, local: Callable[[str], Stat | None]) -> Callable[[str], Stat | None]:
        """``local`` for local paths; for storage paths the object's size and Last-Modified (what
        adopting untraced outputs compares: not the time its local copy was downloaded)."""
        remote = self.registry.remote

        def stat(path: str) -> Stat | None:
            r = remote(path) if path.startswith(_PREFIX) else None
            if r is None:
                return local(path)
            head = self.objects.head(r)
            if head is None:
                return None
            return Stat(statmod.S_IFREG | 0o644, 0, 0, head.size, head.modified_ns, head.modified_ns)

        return stat

    def digest_fn(self, local: Callable[..., str | None]) -> Callable[..., str | None]:
        """``local`` for local paths, the object's digest for storage paths (an upload updates it;
        a re-check after a job does not ask the server again: the job read the fetched copy)."""
        remote = self.registry.remote

        def digest(path: str, *args: Any, **kwargs: Any) -> str | None:
            if path.startswith(_PREFIX) and remote(path) is not None:
                return self.digest(path)
            return local(path, *args, **kwargs)

        return digest

    def fetch(self, step: Step) -> str | None:
        """Download the step's remote inputs whose local copy is not the object's content; the
        reason as text when one cannot be fetched (the step then fails without running)."""
        inst = step.instance
        wanted = [r for r in map(self.registry.remote, inst.input if inst is not None else ()) if r is not None]
        return self.objects.fetch(wanted, self.digester) if wanted else None

    def upload(self, step: Step) -> str | None:
        """Upload the step's remote outputs (its job succeeded and its outputs are all there); the
        reason as text when one fails (the step then fails and records nothing)."""
        wanted = [r for r in map(self.registry.remote, step.outputs) if r is not None]
        return self.objects.upload(wanted, self.digester) if wanted else None

    def remove(self, path: str) -> str | None:
        """Delete the object behind a ``temp()`` output its consumers are done with (Snakemake
        deletes those too); the reason as text when it cannot be."""
        r = self.registry.remote(path)
        return None if r is None else self.objects.delete(r)

    def close(self) -> None:
        self.objects.close(save=not self.readonly)
