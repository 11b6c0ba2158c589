"""Bastion's built-in plugins.

Each module here is registered by the kernel (see ``bastion.BUILTIN_PLUGINS``)
through exactly the hooks a third-party package uses.
"""
