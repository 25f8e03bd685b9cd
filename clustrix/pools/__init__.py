"""Warm worker pools: long-lived workers that take calls from a folder on the cluster.

This package's ``__init__`` imports nothing: its modules ``files``, ``relay``, ``worker`` and
``calls`` run on the cluster (shipped in a job's runtime zip, next to the runner) with the
standard library and cloudpickle only. The client side is ``clustrix.pools.client``
(``clustrix.pool(...)``, ``WorkerPool``).
"""
