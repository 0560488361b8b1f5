"""The lifecycle shared by the in-process test upstreams: a listener on
127.0.0.1:0, one thread running the subclass's _run(), and a stop that
unblocks accept() and joins the thread."""
import socket
import threading


class ThreadedListener:
    def __init__(self, backlog: int = 64):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(backlog)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % self.listener.getsockname()[1]

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self._thread.join(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
