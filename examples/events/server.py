"""A made-up events API, the service examples/events/adapter.py speaks (one process: its
events live in memory).  python server.py --port 8000"""

import argparse
import asyncio
import json

import tornado.web

events: dict[str, list[dict]] = {}
arrived: dict[str, asyncio.Event] = {}


class Events(tornado.web.RequestHandler):
    async def get(self, ch):
        after = int(self.get_query_argument("after", "-1"))
        timeout = float(self.get_query_argument("timeout", "20"))
        log = events.setdefault(ch, [])
        if after < 0:  # a new subscriber: from now on
            after = len(log) - 1
        while len(log) - 1 <= after:  # nothing past the cursor yet
            event = arrived.setdefault(ch, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), timeout)
            except TimeoutError:
                self.set_status(204)
                return
        self.write(json.dumps(log[after + 1:]))

    def post(self, ch):
        log = events.setdefault(ch, [])
        log.append({"id": len(log), "data": json.loads(self.request.body)})
        event = arrived.pop(ch, None)
        if event is not None:
            event.set()
        self.write({"id": len(log) - 1})


class Health(tornado.web.RequestHandler):
    def get(self):
        self.write("ok\n")


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8000)
    a = p.parse_args()
    tornado.web.Application([(r"/events/(\w+)", Events), (r"/healthz", Health)]).listen(
        a.port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
