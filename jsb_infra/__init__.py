"""jsb-infra: two apps that sync over NATS JetStream, provisioned as Pulumi code with least privilege."""

__version__ = "0.1.0"
