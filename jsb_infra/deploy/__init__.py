"""The Pulumi side: the AppPair component, the connection, the dynamic providers, the
config-driven program, state migration."""
