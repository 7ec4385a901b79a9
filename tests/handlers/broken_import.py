"""A handler module whose INIT fails, as a module with a missing dependency does."""

import a_module_that_does_not_exist  # type: ignore[import-not-found]  # noqa: F401  (missing on purpose)


def handler(event: object, context: object) -> None:
    return None
