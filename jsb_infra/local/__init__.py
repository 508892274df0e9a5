"""The embedded default and test infrastructure: a local nats-server, a cluster, PostgreSQL,
`make up`/`make down`."""
