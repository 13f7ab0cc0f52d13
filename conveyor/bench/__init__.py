"""``conveyor bench``: a real broker and real workers over TLS, measured.

Unless ``--broker`` names a running broker, the bench starts its own broker and worker
processes (so the numbers include process boundaries and TLS, as in production) in a
temporary $CONVEYOR_HOME, and stops them at the end. ``system`` runs the processes,
``throughput`` and ``store`` hold the scenarios, ``command`` is the CLI.
"""

from conveyor.bench.command import bench

__all__ = ["bench"]
