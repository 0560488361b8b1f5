"""Acceptance 1: 256 MiB each way at the same time through an explicit
listener, byte-exact, relayed by splice(), with the byte counters matching.
Also: byte counters move while a connection is still open."""
import pytest

from tests.support.echo_server import EchoServer
from tests.support.hashing_sink import HashingSink
from tests.support.payload import small_payload
from tests.support.polling import poll_until
from tests.support.tcp_client import connect, echo_once, stream_through

MIB = 1 << 20
EACH_WAY = 256 * MIB
CLIENT_SEED = 11
UPSTREAM_SEED = 22


@pytest.mark.slow
def test_256_mib_each_way_at_once_is_byte_exact_and_spliced(relay_to):
    with HashingSink(send_bytes=EACH_WAY, seed=UPSTREAM_SEED) as sink:
        relay = relay_to(f"127.0.0.1:{sink.port}")
        before = relay.admin.metrics()
        spliced_before = before.value("fastproxy_relay_spliced_bytes_total")
        copied_before = before.value("fastproxy_relay_copied_bytes_total")

        with connect("127.0.0.1", relay.port, timeout=60) as s:
            client = stream_through(s, EACH_WAY, CLIENT_SEED)
        upstream = sink.next_result(timeout=60)

    assert upstream["rx_error"] is None and upstream["tx_error"] is None, upstream
    # client -> upstream
    assert upstream["received"] == EACH_WAY
    assert upstream["received_sha256"] == client["sent_sha256"]
    # upstream -> client
    assert client["received"] == EACH_WAY
    assert client["received_sha256"] == upstream["sent_sha256"]

    listener = {"listener_name": relay.name}
    cl = {"cluster_name": relay.cluster}

    def counters_settled():
        m = relay.admin.metrics()
        got = (m.value("fastproxy_listener_downstream_cx_rx_bytes_total", **listener),
               m.value("fastproxy_listener_downstream_cx_tx_bytes_total", **listener),
               m.value("fastproxy_cluster_upstream_cx_tx_bytes_total", **cl),
               m.value("fastproxy_cluster_upstream_cx_rx_bytes_total", **cl))
        return m if got == (EACH_WAY,) * 4 else None

    m = poll_until(counters_settled, timeout=5, message="byte counters == 256 MiB each way")
    spliced = m.value("fastproxy_relay_spliced_bytes_total") - spliced_before
    copied = m.value("fastproxy_relay_copied_bytes_total") - copied_before
    assert spliced > 0
    # Every relayed byte is counted exactly once, by splice or by the fallback.
    assert spliced + copied == 2 * EACH_WAY
    assert m.value("fastproxy_listener_downstream_cx_total", **listener) == 1
    assert m.value("fastproxy_cluster_upstream_cx_total", **cl) == 1


def test_byte_counters_move_while_the_connection_is_open(relay_to):
    with EchoServer() as echo:
        relay = relay_to(echo.address, workers=1)
        listener = {"listener_name": relay.name}
        with connect("127.0.0.1", relay.port) as s:
            total = 0
            for i in range(4):
                payload = small_payload(i, 100_000)
                assert echo_once(s, payload) == payload
                total += len(payload)

                def seen(expected=total):
                    m = relay.admin.metrics()
                    return (m.value("fastproxy_listener_downstream_cx_rx_bytes_total", **listener) == expected
                            and m.value("fastproxy_listener_downstream_cx_tx_bytes_total", **listener) == expected
                            and m.value("fastproxy_listener_downstream_cx_active", **listener) == 1)

                poll_until(seen, timeout=3, message=f"rx/tx == {total} with the connection open")
