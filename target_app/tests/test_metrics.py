"""``GET /metrics``: what a Prometheus scrape of one backend reads, against what happened."""

from __future__ import annotations

import asyncio

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text
from tornado.testing import gen_test

from target_app.app import AppConfig
from target_app.tests.test_app import TargetCase

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def samples(text: str, openmetrics: bool) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of an exposition."""
    out = {}
    for family in (parse_om if openmetrics else parse_text)(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class TestMetrics(TargetCase):
    config = AppConfig(max_hold_s=5, default_hold_s=2, channel_buffer_len=5, max_waiters=10)

    async def scrape(self, openmetrics: bool = True) -> dict[tuple, float]:
        headers = {"Accept": OPENMETRICS} if openmetrics else {}
        code, _, resp = await self.call_raw("/metrics", headers)
        assert code == 200
        ctype = resp.headers["Content-Type"]
        assert ctype.startswith("application/openmetrics-text" if openmetrics else "text/plain")
        return samples(resp.body.decode(), openmetrics)

    async def call_raw(self, path: str, headers: dict):
        resp = await self.http_client.fetch(self.get_url(path), headers=headers)
        return resp.code, None, resp

    @gen_test(timeout=20)
    async def test_a_scrape_counts_what_the_clients_saw(self):
        for i in range(8):  # buffer of 5: seqs 1..3 fall out
            assert (await self.call("POST", "/channels/news", {"i": i}))[0] == 201
        code, got, _ = await self.call("GET", "/channels/news?cursor=0&epoch="
                                       + self.service.state.channels.epoch)
        assert code == 200 and got["dropped"] == [1, 3] and len(got["messages"]) == 5
        assert (await self.call("GET", "/channels/news?cursor=8&timeout=0"))[0] == 204
        held = asyncio.ensure_future(self.call("GET", "/channels/news?cursor=8&timeout=5"))
        await self.until(lambda: self.service.waiting == 1, "the poll is held")
        m = await self.scrape()
        assert m[("pollbench_target_held_polls", ())] == 1
        assert m[("pollbench_target_messages_published_total", ())] == 8
        assert m[("pollbench_target_messages_delivered_total", ())] == 5
        assert m[("pollbench_target_messages_dropped_total", ())] == 3
        assert m[("pollbench_target_polls_answered_total", (("outcome", "messages"),))] == 1
        assert m[("pollbench_target_polls_answered_total", (("outcome", "timeout"),))] == 1
        route = (("method", "POST"), ("route", "channel"), ("status", "201"))
        assert m[("pollbench_target_http_requests_total", route)] == 8
        # the answered poll's time-to-answer is in the histogram, in seconds
        assert m[("pollbench_target_poll_answer_seconds_count", ())] == 1
        assert 0 < m[("pollbench_target_poll_answer_seconds_sum", ())] < 5
        assert m[("pollbench_target_poll_answer_seconds_bucket", (("le", "+Inf"),))] == 1
        assert m[("pollbench_target_channels", ())] == 1
        assert m[("pollbench_target_process_open_fds", ())] > 0  # the process' own
        await self.call("POST", "/channels/news", {"i": 8})  # wakes the held poll
        assert (await held)[0] == 200
        m = await self.scrape(openmetrics=False)  # the classic text format too
        assert m[("pollbench_target_messages_delivered_total", ())] == 6
        assert m[("pollbench_target_poll_answer_seconds_count", ())] == 2
        assert m[("pollbench_target_held_polls", ())] == 0
        # a held poll's wait is its time-to-answer: the second answer waited for the publish
        assert m[("pollbench_target_poll_answer_seconds_bucket", (("le", "0.001"),))] <= 1
        # /stats agrees (it sums the same counters by status)
        assert self.stats()["responses_by_status"]["201"] == 9
        assert self.stats()["messages_dropped"] == 3

    @gen_test(timeout=20)
    async def test_connection_reuse_is_a_histogram_of_closed_connections(self):
        # one keep-alive connection carrying 3 requests, then closed by the client
        reader, writer = await asyncio.open_connection("127.0.0.1", self.get_http_port())
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" * 3)
        answers = b""
        while answers.count(b"HTTP/1.1 200") < 3 or not answers.endswith(b"}"):
            chunk = await reader.read(65536)
            assert chunk, answers
            answers += chunk
        writer.close()
        await self.until(lambda: 3 in self.service.stats.requests_per_closed_connection,
                         "the 3-request connection is closed")
        m = await self.scrape()
        bucket = {dict(labels)["le"]: v for (name, labels), v in m.items()
                  if name == "pollbench_target_requests_per_connection_bucket"}
        assert bucket["5.0"] - bucket["2.0"] == 1  # the one connection of 3 requests
        assert m[("pollbench_target_requests_per_connection_sum", ())] >= 3
        assert bucket["+Inf"] == m[("pollbench_target_requests_per_connection_count", ())]
