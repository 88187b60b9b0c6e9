"""The reference Tornado long-poll service that pollbench measures (see docs/http-api.md)."""

from target_app.app import AppConfig, PollHTTPServer, make_app

__all__ = ["AppConfig", "PollHTTPServer", "make_app"]
