"""Session fixtures that start real services for the backend tests.

``docker_engine``, ``ssh_hosts``, ``slurm_cluster`` and ``ec2_lab`` each start their service once per session
under a temp dir and stop it at the end. When a service cannot run here the tests using it are
skipped with the reason; under ``CI=true`` they fail instead, so a CI machine that lost a service
cannot pass by skipping.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar

import pytest

from tests.services import ServiceUnavailable, in_ci

if TYPE_CHECKING:
    from tests.services.docker import DockerEngine
    from tests.services.ec2 import Ec2Lab
    from tests.services.slurm import SlurmCluster
    from tests.services.ssh import SshHosts

REPO = Path(__file__).resolve().parents[2]


def _map_backends_package() -> None:
    # setup.cfg installs backends/ as flowmake.backends; from a plain checkout (not pip-installed)
    # make the same mapping so the tests run either way.
    try:
        import flowmake.backends  # noqa: F401
        return
    except ImportError:
        pass
    import flowmake

    spec = importlib.util.spec_from_loader("flowmake.backends", loader=None, is_package=True)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__path__ = [str(REPO / "backends")]
    sys.modules["flowmake.backends"] = module
    flowmake.backends = module  # type: ignore[attr-defined]


_map_backends_package()

T = TypeVar("T")


def _start(what: str, start: Callable[[], T]) -> T:
    try:
        return start()
    except ServiceUnavailable as exc:
        if in_ci():
            pytest.fail(f"{what} unavailable in CI: {exc.reason}", pytrace=False)
        pytest.skip(f"{what} unavailable: {exc.reason}")


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerEngine]:
    from tests.services.docker import start_docker

    engine = _start("docker", lambda: start_docker(tmp_path_factory.mktemp("docker")))
    # The backend calls the docker CLI, which finds the engine through DOCKER_HOST.
    old = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = engine.host
    try:
        yield engine
    finally:
        if old is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = old
        engine.stop()


@pytest.fixture(scope="session")
def docker_python_image(docker_engine: DockerEngine) -> str:
    """A Debian+python3 image in ``docker_engine`` (debootstrap, ~40 s, once per session)."""
    return _start("docker python image", docker_engine.python_image)


@pytest.fixture(scope="session")
def ssh_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHosts]:
    from tests.services.ssh import start_ssh_hosts

    hosts = _start("ssh hosts", lambda: start_ssh_hosts(tmp_path_factory.mktemp("ssh"), n=3,
                                                       private=(2,)))
    try:
        yield hosts
    finally:
        hosts.stop()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    from tests.services.slurm import start_slurm

    cluster = _start("slurm", lambda: start_slurm(tmp_path_factory.mktemp("slurm")))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def slurm_accounting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A separate cluster with slurmdbd + a private MariaDB, so ``sacct`` works."""
    from tests.services.slurm import start_slurm_accounting

    cluster = _start("slurm accounting",
                     lambda: start_slurm_accounting(tmp_path_factory.mktemp("slurm-acct")))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def ec2_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ec2Lab]:
    """moto's EC2 whose instances are sshd hosts in network namespaces (``tests/services/ec2.py``)."""
    from tests.services.ec2 import start_ec2_lab

    lab = _start("ec2 lab", lambda: start_ec2_lab(tmp_path_factory.mktemp("ec2")))
    try:
        yield lab
    finally:
        lab.stop()
