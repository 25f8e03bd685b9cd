"""Reaching a cluster's login node: which transport ``config`` asks for."""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import ClusterConfig
from ..errors import BackendUnavailableError, ConfigError
from ..transport.base import Transport
from ..transport.local import LocalTransport

logger = logging.getLogger("clustrix.remote")


def make_transport(config: ClusterConfig) -> Transport:
    """How to reach ``config``'s login node: SSH, or this machine when no host is set.

    SSH is paramiko's or the system ssh's, as ``ssh_client`` says (``auto``: see
    ``transport/choice.py``). Raises ``ConfigError`` for a password with ``openssh``.
    """
    if not config.cluster_host:
        if config.cluster_type == "ssh":
            raise BackendUnavailableError("cluster_type='ssh' needs cluster_host to be set")
        return LocalTransport()  # on the login node itself: run sbatch & co. directly
    from ..transport.choice import choose_ssh_client

    client, why = choose_ssh_client(
        config.ssh_client,
        config.cluster_host,
        password=config.password is not None,
        key_file=config.key_file,
    )
    logger.debug("reaching %s with %s: %s", config.cluster_host, client, why)
    if client == "openssh":
        return _openssh_transport(config)
    from ..transport.ssh import shared_transport

    known_hosts = config.known_hosts_file
    return shared_transport(
        config.cluster_host,
        port=config.cluster_port,
        username=config.username,
        key_file=config.key_file,
        password=config.password,
        host_key_policy=config.host_key_policy,
        known_hosts=None if known_hosts is None else Path(known_hosts).expanduser(),
    )


def _openssh_transport(config: ClusterConfig) -> Transport:
    if config.password is not None:
        # ssh reads passwords from a terminal or SSH_ASKPASS only, never from its caller.
        raise ConfigError(
            "the password setting cannot be used with ssh_client='openssh': use "
            "ssh_client='paramiko', or a key (key_file or an SSH agent); ssh itself asks for "
            "a password on the terminal (or through SSH_ASKPASS) when the server wants one",
            field="password",
        )
    from ..transport.openssh import shared_openssh_transport

    assert config.cluster_host is not None
    return shared_openssh_transport(
        config.cluster_host,
        port=config.cluster_port,
        username=config.username,
        key_file=config.key_file,
        known_hosts_file=config.known_hosts_file,
        host_key_policy=config.host_key_policy,
    )
