"""SQL plumbing and the parts of the durable engines: migrations, named queries, the SQLite
writer, and the mixins the two store classes are made of (claims, reads, opening).

The store classes themselves are one level up (``stores/sqlite.py``, ``stores/postgres.py``).
"""
