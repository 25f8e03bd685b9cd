"""The cluster backend: calls run as jobs on a scheduler (or a plain SSH host) reached over a
transport. Its modules are imported by name (``clustrix.remote.backend`` and so on).
"""
