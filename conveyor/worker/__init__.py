"""Workers: the task registry, the execution pools and the network runner."""

POOL_KINDS = ("thread", "process", "async")
"""The execution pools a worker can run jobs in (``--pool``)."""
