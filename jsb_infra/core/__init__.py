"""The pure core: spec -> topology -> accounts/permissions -> documents and outputs. No I/O."""
