"""A Socket.IO service to measure with pollbench: python-socketio in Tornado mode, long-polling
only, rooms shared by every process through Redis (AsyncRedisManager).

    python app.py --port 8000 --redis redis://127.0.0.1:6379/0

Clients join a room named in the handshake's query string (``&room=ch3``) and receive the
event ``msg``; ``POST /publish/<room>`` emits its JSON body to that room from any process.
``GET /healthz`` answers 200 once the server listens.  ``EMIT_DELAY_MS`` (environment): wait
this long before every emit (a known regression, for pollbench check to catch).
"""

import argparse
import asyncio
import json
import os
from urllib.parse import parse_qs

import socketio
import tornado.web

EMIT_DELAY_S = float(os.environ.get("EMIT_DELAY_MS", "0")) / 1000


def make_app(redis_url: str | None) -> tornado.web.Application:
    manager = socketio.AsyncRedisManager(redis_url) if redis_url else None
    sio = socketio.AsyncServer(async_mode="tornado", transports=["polling"],
                               allow_upgrades=False, client_manager=manager,
                               cors_allowed_origins=[])

    @sio.event
    async def connect(sid, environ, auth=None):
        room = parse_qs(environ.get("QUERY_STRING", "")).get("room", [None])[0]
        if room:
            await sio.enter_room(sid, room)

    class Publish(tornado.web.RequestHandler):
        async def post(self, room):
            try:
                data = json.loads(self.request.body)
            except ValueError:
                raise tornado.web.HTTPError(400, "the body must be JSON") from None
            if EMIT_DELAY_S:
                await asyncio.sleep(EMIT_DELAY_S)
            await sio.emit("msg", data, room=room)
            self.write({"ok": True})

    class Health(tornado.web.RequestHandler):
        def get(self):
            self.write("ok\n")

    return tornado.web.Application([
        (r"/socket.io/", socketio.get_tornado_handler(sio)),
        (r"/publish/(\w+)", Publish),
        (r"/healthz", Health),
    ])


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--redis", default=None, help="redis://HOST:PORT/DB shared by every process")
    a = p.parse_args()
    make_app(a.redis).listen(a.port, a.address)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
