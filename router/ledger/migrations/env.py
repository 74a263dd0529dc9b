"""Alembic environment: run on the connection `router.ledger.schema.upgrade` hands over."""

from alembic import context

from router.ledger.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
