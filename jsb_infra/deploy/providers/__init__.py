"""Pulumi dynamic resources: per pair a Stream, a Consumer and a PermissionDocument per app (each
carrying its own rendered config); per app an AppCredential; ServerDocuments for what the servers load.

Each module holds one resource and its provider; `base` holds the shared diff logic and `settings`
resolves a resource's `connection` input against the stack config the engine hands over through
`configure` (admin credentials from the stack config never enter state).
Modules here have no import-time side effects: the provider host imports them to unpickle.
"""

from jsb_infra.deploy.providers.consumer import Consumer
from jsb_infra.deploy.providers.credential import AppCredential
from jsb_infra.deploy.providers.permission_document import PermissionDocument
from jsb_infra.deploy.providers.stream import Stream

__all__ = ["AppCredential", "Consumer", "PermissionDocument", "Stream"]
