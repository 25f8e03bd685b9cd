"""The kinds of local executor, in one place (the ``local_executor`` setting lists them).

A module of its own that imports nothing, so that the settings can name the kinds without
the settings importing the pools, and the pools without importing the settings (a job's
shipped runtime has the pools, but not the settings and what they need, such as PyYAML).
"""

#: ``auto`` picks processes, falling back to threads for calls that cannot be pickled.
KINDS = ("auto", "processes", "threads", "inline")
