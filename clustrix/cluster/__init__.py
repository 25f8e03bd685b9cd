"""The cluster backend: calls as jobs on a scheduler, reached over a transport.

The package's modules are imported by name (``clustrix.cluster.backend`` and so on); this
file imports none of them, so that the lowest layers may use ``clustrix.layout``.
"""
