"""alembic environment: the master passes its connection in."""

from alembic import context

from cinder_ursa.master import models

config = context.config
connection = config.attributes['connection']
context.configure(connection=connection, target_metadata=models.metadata,
                  render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
