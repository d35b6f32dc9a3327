"""Client strings made safe to echo in a reply or write to a log line."""

CLIP_CHARS = 80  # characters of a client string kept in a reply or a log line


def clip(text: str, limit: int = CLIP_CHARS) -> str:
    """At most `limit` characters of `text` (then "…"), every control or other unprintable
    character escaped as in a Python literal: a client's newline can never start a new log line,
    and a client's megabyte never reaches a reply or a log."""
    head = text[:limit]
    if not head.isprintable():
        head = "".join(c if c.isprintable() else repr(c)[1:-1] for c in head)
    return head + "…" if len(text) > limit else head
