"""The jsb Pulumi program (Pulumi.yaml `main: stacks/`); the logic is jsb_infra.deploy.program."""

from jsb_infra.deploy.program import main

main()
