"""How a sandbox process is started: forked by the forkserver, carrying nothing of the worker's `__main__`.

multiprocessing prepares every child it starts by re-running the parent's main module, so that objects
defined there can be unpickled. A worker's main module is the `headwater` console script, and re-running
it in a sandbox imports the whole command line (pydantic, structlog, redis, prometheus_client, the
settings): some 30 MB in every sandbox, and Headwater's own modules loaded beside the handler's. A
sandbox needs none of it: its target, `workers.sandbox.serve`, is importable by name. So its preparation
data leaves the main module out, and the worker's command-line arguments too (a `--redis-url` may hold
a password; a handler sees only the program's name in `sys.argv`).

Everything else is multiprocessing's forkserver start, unchanged: the same forkserver (and its preload),
the same pipes and sentinel, the same `Process` API to the runtime.
"""

from __future__ import annotations

import io
import os
import sys
from multiprocessing import forkserver, popen_forkserver, reduction, spawn, util
from multiprocessing.context import ForkServerProcess, set_spawning_popen
from multiprocessing.process import BaseProcess

_MAIN_MODULE_KEYS = ("init_main_from_name", "init_main_from_path")


class SandboxProcess(ForkServerProcess):
    """A forkserver process prepared without the worker's main module or arguments."""

    @staticmethod
    def _Popen(process_obj: BaseProcess) -> popen_forkserver.Popen:  # noqa: N802 (multiprocessing's name)
        return _SandboxPopen(process_obj)


class _SandboxPopen(popen_forkserver.Popen):
    _fds: list[int]  # set by the base class: descriptors the forkserver passes on to the child

    def _launch(self, process_obj: BaseProcess) -> None:
        """Hand the forkserver the trimmed preparation data and the pickled process, as its Popen does."""
        preparation = spawn.get_preparation_data(process_obj.name)
        for key in _MAIN_MODULE_KEYS:
            preparation.pop(key, None)
        preparation["sys_argv"] = sys.argv[:1]
        message = io.BytesIO()
        set_spawning_popen(self)  # lets the child's end of the pipe be pickled as a file descriptor to pass
        try:
            reduction.dump(preparation, message)
            reduction.dump(process_obj, message)
        finally:
            set_spawning_popen(None)
        self.sentinel, data_fd = forkserver.connect_to_new_process(self._fds)
        parent_alive = os.dup(data_fd)  # held open: the child sees its parent gone once every copy is closed
        self.finalizer = util.Finalize(self, _close, (parent_alive, self.sentinel))
        with open(data_fd, "wb", closefd=True) as stream:
            stream.write(message.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


def _close(*descriptors: int) -> None:
    for descriptor in descriptors:
        os.close(descriptor)
