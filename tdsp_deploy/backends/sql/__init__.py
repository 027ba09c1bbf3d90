"""The SQL core: what the sqlserver target and the synapse target's sql mode share.

Not a backend of its own (no entry point): a base backend (backend.py) over one DB-API
connection wrapper (connection.py) that translates the driver's errors once (errors.py, which
also holds the one table of THROW numbers), the T-SQL both run on an endpoint's rows (rows.py),
the three tables (schema.py) and the reading of the one request log (request_log.py), the
deployment document and render files (document.py), request parsing and the scoring call
(requests.py), the schema fields both targets take (target.py), and the ``Dialect`` that names
what differs between SQL Server and a dedicated SQL pool (dialect.py).
"""
