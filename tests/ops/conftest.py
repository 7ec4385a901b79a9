"""Operations tests reuse the workers' running stack (config file, real `headwater worker` pools)."""

from tests.workers.conftest import make_stack

__all__ = ["make_stack"]
