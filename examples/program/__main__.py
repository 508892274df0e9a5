"""platform: two NATS deployments (east and west), one app pair each, built with jsb-infra's public API.

Stack config (project `platform`, see README.md of this directory):
  platform:eastServers   list of URLs of the east deployment
  platform:eastAdmin     object {user, password, ...}: east's admin, read by the provider host; its
                         password as {env: VARIABLE} (or {file: PATH}), so it is never in the state
  platform:westServers   list of URLs of the west deployment
  platform:westPassword  optional secret: west's admin password (user `platform:westUser`, default deploy)
  platform:outputDir     optional: where the server documents are written (default `out`)
  platform:protect       optional bool: Pulumi `protect` on the streams and consumers (default true)
"""

import pulumi

from jsb_infra import AdminCredentials, AppAccounts, AppAccountsArgs, AppPair, AppPairArgs, Connection


class Environment(pulumi.ComponentResource):
    """This project's own resource: what the stack provisions, in one place (no jsb-infra in it)."""

    def __init__(
        self, name: str, deployments: dict[str, list[str]], opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("platform:index:Environment", name, None, opts)
        self.deployments = deployments
        self.register_outputs({"deployments": deployments})


config = pulumi.Config()  # this project's own keys: platform:*
protect = config.get_bool("protect")
protect = True if protect is None else protect
out = config.get("outputDir") or "out"

# East: the admin is a stack config key (naming where its password is read); each child names the
# key, the provider host reads it.
east = Connection(
    "east",
    servers=config.require_object("eastServers"),
    admin_config_key="platform:eastAdmin",
)

# West: the admin is a secret Input; every child carries it (encrypted) in its `connection` input.
west_password = config.get_secret("westPassword")
west = Connection(
    "west",
    servers=config.require_object("westServers"),
    admin=(
        AdminCredentials(user=config.get("westUser") or "deploy", password=west_password)
        if west_password is not None
        else None
    ),
)

environment = Environment(pulumi.get_stack(), {"east": list(east.servers), "west": list(west.servers)})

orders_billing = AppPair(
    "orders-billing",
    AppPairArgs(
        stream="orders-billing-sync",
        apps=("orders", "billing"),
        consumer={"max_deliver": 5, "backoff": ["1s", "5s", "15s"]},
        stream_options={"max_age": "7d"},
        protect=protect,
    ),
    connection=east,
)

inventory_shipping = AppPair(
    "inventory-shipping",
    AppPairArgs(
        stream="inventory-shipping-sync",
        apps=("inventory", "shipping"),
        stream_options={"retention": "limits", "max_age": "1d"},
        protect=protect,
    ),
    connection=west,
)

# One AppAccounts per deployment: its apps' identities, its accounts include, its documents.
east_accounts = AppAccounts(
    "east-accounts", AppAccountsArgs(pairs=[orders_billing], output_dir=f"{out}/east")
)
west_accounts = AppAccounts(
    "west-accounts", AppAccountsArgs(pairs=[inventory_shipping], output_dir=f"{out}/west")
)

pulumi.export("deployments", environment.deployments)
# Plain values derived from the specs: known at preview, not secret.
pulumi.export("bridges", {p.pair.stream: p.bridges for p in (orders_billing, inventory_shipping)})
# Each app's NKey seed: a secret output (shown only with --show-secrets).
pulumi.export(
    "credentials",
    pulumi.Output.secret({"east": east_accounts.credentials, "west": west_accounts.credentials}),
)
pulumi.export("accounts_conf", {"east": east_accounts.accounts_conf, "west": west_accounts.accounts_conf})
