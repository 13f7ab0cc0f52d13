"""SQL plumbing for the durable engines: migrations, named queries, the SQLite writer.

Blocking database code lives here; the store modules one level up hold the logic.
"""
