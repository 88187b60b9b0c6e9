"""pollbench's protocol for the made-up events API of server.py: GET /events/<ch>?after=<id>
holds until an event past <id> arrives (a JSON list of {"id", "data"}), 204 when the hold
times out; POST /events/<ch> appends one.  `pollbench run --protocol adapter:EventsApi`."""

from loadtests.protocols import BadAnswer, Delivered, Poll, Protocol, Request, read_stamp


class EventsApi(Protocol):
    name = "events"
    poll_name = "/events/[ch]"
    timeout_name = "/events/[ch] (204)"
    publish_name = "/events/[ch] POST"

    def poll(self, channel, cursor):
        after = "" if cursor is None else f"&after={cursor}"
        return Request("GET", f"/events/{channel}?timeout={self.poll_timeout_s:g}{after}")

    def read_poll(self, resp, cursor):
        if resp.status == 204:
            return Poll((), cursor)
        if resp.status != 200:
            raise BadAnswer(f"HTTP {resp.status} from the events API")
        events = resp.json()
        return Poll([Delivered(read_stamp(e["data"])) for e in events],
                    events[-1]["id"] if events else cursor)

    def publish(self, channel, body):
        return Request("POST", f"/events/{channel}", body)
