"""The relay check's upstream, run inside the container: a TCP echo server on
127.0.0.1:PORT (argv[1]) that sends every byte back and closes after the peer's FIN."""
import socketserver
import sys


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


Server(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
