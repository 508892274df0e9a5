"""State migration between resource layouts (`jsb-infra migrate-state`)."""
