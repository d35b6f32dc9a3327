"""Base of every wire message: JSON object tagged by `type`, unknown fields ignored."""

import msgspec


class Message(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    """Readers ignore unknown fields (msgspec's default), so senders may add fields."""
