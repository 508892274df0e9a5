"""The jsb Pulumi program (Pulumi.yaml `main: stacks/`); the logic is jsb_infra.program, tested with mocks."""

from jsb_infra.program import main

main()
