"""A handler module that fails at import, as a missing model or a bad dependency would."""

raise RuntimeError("broken on purpose at import")


def lambda_handler(event: object, context: object) -> object:  # pragma: no cover - never reached
    return event
