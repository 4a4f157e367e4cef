"""The listening socket `llmcycle serve` and `llmcycle label` share (serve/listening.py)."""

from __future__ import annotations

import asyncio
import socket

from llmcycle.deploy.serve.listening import bind


def test_connections_to_the_listening_socket_send_without_nagles_delay():
    """asyncio sets TCP_NODELAY only on connections whose socket names IPPROTO_TCP; without it each small write on a
    kept-alive connection waited for the client's delayed ACK (about 40 ms on Linux)."""

    async def accepted_nodelay() -> int:
        seen = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):
                sock = transport.get_extra_info("socket")
                seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        listening = bind("127.0.0.1", 0)
        server = await asyncio.get_running_loop().create_server(Probe, sock=listening)  # as uvicorn serves a socket
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", listening.getsockname()[1])
            value = await asyncio.wait_for(seen, timeout=10)
            writer.close()
            return value
        finally:
            server.close()

    assert asyncio.run(accepted_nodelay()) != 0
