"""Which worker process holds which downstream connection.

Looks at each worker's TCP sockets (psutil, i.e. /proc of this network
namespace) and maps the client's ephemeral port of every connection
accepted on `listener_port` to the pid of the worker that accepted it.
"""
import psutil


def client_port_owners(worker_pids: list[int], listener_port: int) -> dict[int, int]:
    owners: dict[int, int] = {}
    for pid in worker_pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for c in conns:
            if c.laddr and c.raddr and c.laddr.port == listener_port:
                owners[c.raddr.port] = pid
    return owners
