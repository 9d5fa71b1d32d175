"""PostgreSQL: the pool and migrations, the commands' writes, the outbox, and the read queries."""
