"""A handler whose INIT (module import) takes longer than its function timeout, as heavy imports do."""

import time

time.sleep(1.5)


def handler(event: object, context: object) -> str:
    return "ran"
