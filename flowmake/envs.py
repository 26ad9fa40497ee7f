"""Software deployment: a rule's ``conda:`` environment and ``envmodules:``, and the wrapper prefix.

As in Snakemake, both directives are ignored unless asked for: ``--use-conda`` (also
``--sdm conda``) runs a rule's jobs inside its environment, ``--use-envmodules`` loads its modules
first. ``Deployment`` is what one invocation asked for; the planner reads it through the
workflow (the environment's content is part of the step key) and ``jobs.job_command`` wraps the
command sent to the backend with ``wrap``.

An environment is created once per environment file content, before the jobs start, with the
first of conda, mamba or micromamba on PATH, at ``.flowmake/conda/<digest of the file>`` (or
under ``--conda-prefix``, which several workflows can share); a
marker file says it is complete, so a creation cut short is redone. A job runs inside it with the
environment's ``bin`` first on PATH, ``CONDA_PREFIX`` set and its ``activate.d`` scripts sourced
(what activation does, without needing conda at run time); the Python of a run:/script:/wrapper:
step runs in flowmake's interpreter and gets the env's packages after its own (``site_packages``).
Envs are created on this machine: a remote backend sees them only through a shared working
directory.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

import blake3

from flowmake import wrappers
from flowmake.errors import DeploymentError

if TYPE_CHECKING:
    from flowmake.rules import Rule

FRONTENDS = ("conda", "mamba", "micromamba")
NBCONVERT = "jupyter-nbconvert"
JUPYTER_HINT = ("install Jupyter where the job runs (pip install nbconvert ipykernel), or give the "
                "rule a conda: environment with jupyter and run with --use-conda")
ENV_DIR = os.path.join(".flowmake", "conda")
DONE = ".flowmake-env-complete"


@dataclass
class Deployment:
    """What this invocation asked for; the default is what a rule file gets without flags."""

    use_conda: bool = False
    use_envmodules: bool = False
    wrapper_prefix: str = wrappers.DEFAULT_PREFIX
    conda_prefix: str | None = None  # --conda-prefix: where envs live (default .flowmake/conda)
    # Never fetch a wrapper: set in a job, which reads the copy its planner resolved.
    offline: bool = False
    _wrappers: dict[str, wrappers.Wrapper] = field(default_factory=dict, repr=False, compare=False)
    _env_files: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    def wrapper(self, rule: Rule) -> wrappers.Wrapper:
        """The rule's wrapper on local disk, resolved once per rule file load."""
        name = rule.wrapper or ""
        found = self._wrappers.get(name)
        if found is None:
            found = self._wrappers[name] = wrappers.resolve(
                name, self.wrapper_prefix, rule=rule.name, location=rule.location,
                offline=self.offline)
        return found

    def env_content(self, path: str, rule: Rule) -> bytes:
        """An environment file's bytes, read once per invocation (every step's key needs them)."""
        content = self._env_files.get(path)
        if content is None:
            content = self._env_files[path] = _read_env(path, rule)
        return content

    def as_payload(self) -> dict[str, object]:
        """What a job needs of it (only what differs from the default: commands stay short)."""
        full = {"use_conda": self.use_conda, "use_envmodules": self.use_envmodules,
                "wrapper_prefix": self.wrapper_prefix, "conda_prefix": self.conda_prefix}
        default = Deployment()
        return {k: v for k, v in full.items() if v != getattr(default, k)}

    @classmethod
    def from_payload(cls, data: dict[str, object] | None) -> Deployment:
        data = data or {}
        conda_prefix = data.get("conda_prefix")
        return cls(use_conda=bool(data.get("use_conda")), use_envmodules=bool(data.get("use_envmodules")),
                   wrapper_prefix=str(data.get("wrapper_prefix") or wrappers.DEFAULT_PREFIX),
                   conda_prefix=str(conda_prefix) if conda_prefix else None, offline=True)


def local_prefix(prefix: str) -> str:
    """A wrapper prefix that is a relative local path, made absolute against the current directory
    (where the user typed it): jobs run elsewhere and must find the same folder."""
    if prefix.startswith(("http://", "https://")):
        return prefix
    if prefix.startswith("file:"):
        path = wrappers.local_path(prefix) or ""
        return "file://" + path + ("/" if prefix.endswith("/") else "")
    return os.path.abspath(prefix) + ("/" if prefix.endswith("/") else "")


# -- conda ------------------------------------------------------------------------------------


def env_file(rule: Rule, deployment: Deployment) -> str | None:
    """The conda environment file a rule's jobs use under --use-conda (None: none, or not asked).

    The rule's own ``conda:`` (relative to its rule file), else its wrapper's environment.yaml.
    """
    if not deployment.use_conda:
        return None
    if rule.conda is not None:
        if not isinstance(rule.conda, (str, os.PathLike)):
            raise rule.error(f"conda: expected the path of an environment file, got {rule.conda!r}",
                             hint="functions in conda: are not supported")
        path = os.fspath(rule.conda)
        if not path.endswith((".yaml", ".yml")) and "/" not in path:
            raise rule.error(f"conda: '{path}' names an existing environment, which flowmake does "
                             "not support", hint="give an environment file (.yaml) instead")
        if os.path.isabs(path):
            return path
        return os.path.normpath(os.path.join(rule.basedir, path))
    if rule.wrapper is not None:
        return deployment.wrapper(rule).env_file
    return None


def _read_env(path: str, rule: Rule) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise rule.error(f"conda: cannot read environment file '{path}': {e.strerror}",
                         hint="paths in conda: are relative to the rule file") from None


def env_prefix(path: str, rule: Rule, deployment: Deployment, workdir: str) -> str:
    """Where the environment of file ``path`` lives (an existing env folder is used as it is)."""
    if os.path.isdir(path):
        return os.path.abspath(path)
    digest = blake3.blake3(deployment.env_content(path, rule)).hexdigest(16)
    return os.path.join(deployment.conda_prefix or os.path.join(workdir, ENV_DIR), digest)


def key_text(rule: Rule, deployment: Deployment) -> str:
    """What the deployment adds to a step key: the environment file's content, the modules."""
    parts = []
    path = env_file(rule, deployment)
    if path is not None:
        # An env prefix inside the workflow is keyed by its place there: a clone elsewhere (sharing
        # a cache) gets the same key.
        content = f"prefix {_in_workflow(path, rule)}" if os.path.isdir(path) else deployment.env_content(
            path, rule).decode("utf-8", "surrogateescape")
        parts.append(f"\nconda\n{content}")
    if deployment.use_envmodules and rule.envmodules:
        parts.append("\nenvmodules " + " ".join(rule.envmodules))
    return "".join(parts)


def _in_workflow(path: str, rule: Rule) -> str:
    root = rule.workflow.workdir
    rel = os.path.relpath(path, root)
    return path if rel == ".." or rel.startswith("../") else rel


def site_packages(rule: Rule, deployment: Deployment, workdir: str) -> list[str]:
    """The environment's Python package folders, for the Python of a run:/script:/wrapper: step.

    That code runs in flowmake's interpreter (it needs the rule file loaded), so the env's
    packages come after flowmake's own: pure-Python ones always import, compiled ones when the
    env's Python is the same version.
    """
    path = env_file(rule, deployment)
    if path is None:
        return []
    prefix = env_prefix(path, rule, deployment, workdir)
    return sorted(glob.glob(os.path.join(prefix, "lib", "python3*", "site-packages")))


def frontend() -> str | None:
    for name in FRONTENDS:
        found = shutil.which(name)
        if found:
            return found
    return None


def create_env(path: str, rule: Rule, deployment: Deployment, workdir: str,
               note: Callable[[str], None]) -> str:
    """The environment of file ``path``, created first if it is not complete; its prefix."""
    prefix = env_prefix(path, rule, deployment, workdir)
    if os.path.isdir(path) or os.path.exists(os.path.join(prefix, DONE)):
        return prefix
    tool = frontend()
    if tool is None:
        raise DeploymentError("--use-conda: no conda/mamba on PATH", rule=rule.name,
                              location=rule.location, details=[f"environment: {path}"],
                              hint="install Miniforge (conda and mamba) or micromamba, or run without --use-conda")
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    with open(prefix + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another flowmake may be creating the same one
        if os.path.exists(os.path.join(prefix, DONE)):
            return prefix
        if os.path.exists(prefix):  # a creation cut short: conda refuses a non-empty prefix
            shutil.rmtree(prefix)
        shutil.copyfile(path, prefix + ".yaml")  # so one can see what an env folder holds
        note(f"creating conda environment {os.path.relpath(path)} at {os.path.relpath(prefix)}")
        argv = _create_argv(tool, prefix + ".yaml", prefix)
        res = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             errors="replace")
        if res.returncode != 0 or not os.path.isdir(prefix):
            tail = res.stdout.strip().splitlines()[-10:]
            raise DeploymentError(f"cannot create the conda environment of {path}", rule=rule.name,
                                  location=rule.location,
                                  details=["command: " + shlex.join(argv), *tail])
        with open(os.path.join(prefix, DONE), "w"):
            pass
    return prefix


def _create_argv(tool: str, env_yaml: str, prefix: str) -> list[str]:
    if os.path.basename(tool) == "micromamba":
        return [tool, "create", "--yes", "--quiet", "--file", env_yaml, "--prefix", prefix]
    return [tool, "env", "create", "--quiet", "--file", env_yaml, "--prefix", prefix]


# -- env modules ------------------------------------------------------------------------------


def modules_available() -> bool:
    """Whether ``module`` works in the bash a job runs in (Lmod and Environment Modules export it
    as a function; a plain executable also counts)."""
    try:
        return subprocess.run(["bash", "-c", "type module"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode == 0
    except OSError:
        return False


# -- before the jobs, and around each ---------------------------------------------------------


def missing_jupyter(rule: Rule) -> DeploymentError:
    return DeploymentError(f"notebook: {NBCONVERT} is not on PATH", rule=rule.name,
                           location=rule.location, hint=JUPYTER_HINT)


def prepare(rules: Iterable[Rule], deployment: Deployment, workdir: str,
            note: Callable[[str], None]) -> None:
    """Create the environments and check the tools the rules that will run need, before any job."""
    checked_modules = False
    for rule in rules:
        path = env_file(rule, deployment)
        if path is not None:
            create_env(path, rule, deployment, workdir, note)
        elif rule.notebook is not None and rule.script is None and shutil.which(NBCONVERT) is None:
            raise missing_jupyter(rule)  # (inside an environment, the job itself looks)
        if deployment.use_envmodules and rule.envmodules and not checked_modules:
            if not modules_available():
                raise DeploymentError("--use-envmodules: the 'module' command is not available",
                                      rule=rule.name, location=rule.location,
                                      hint="load Lmod or Environment Modules in this shell, or run "
                                      "without --use-envmodules")
            checked_modules = True


def wrap(command: str, rule: Rule, deployment: Deployment, workdir: str) -> str:
    """``command`` as it runs inside the rule's environment and with its modules loaded."""
    lines = []
    if deployment.use_envmodules and rule.envmodules:
        lines.append("module purge && module load " + " ".join(shlex.quote(m) for m in rule.envmodules))
    path = env_file(rule, deployment)
    if path is not None:
        prefix = shlex.quote(env_prefix(path, rule, deployment, workdir))
        lines += [
            f"export CONDA_PREFIX={prefix} CONDA_DEFAULT_ENV={prefix}",
            'export PATH="$CONDA_PREFIX/bin:$PATH"',
            # activate.d scripts are written for interactive shells, not for `set -u`.
            'set +u; for _f in "$CONDA_PREFIX"/etc/conda/activate.d/*.sh; do '
            'if [ -f "$_f" ]; then . "$_f"; fi; done; unset _f; set -u',
        ]
    if not lines:
        return command
    return "\n".join([*lines, command])
