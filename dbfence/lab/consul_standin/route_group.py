"""The base of the stand-in's route modules (``routes_*.py``): a group of routes over the state.

Why: every area's routes read the same state and render through the same :class:`Renderer`; the
dispatcher (``http_api.py``) only asks each group for its :meth:`RouteGroup.routes`. Invariant: a
group holds no state of its own (it is shared by every handler thread); all it changes goes
through :class:`StandinState`, under its lock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from dbfence.lab.consul_standin.http_render import Renderer
from dbfence.lab.consul_standin.http_wire import (
    JSONValue,
    Reply,
    Request,
    Route,
    blocking_args,
    index_headers,
    json_reply,
)
from dbfence.lab.consul_standin.state import StandinState

T = TypeVar("T")


class RouteGroup:
    def __init__(self, state: StandinState, render: Renderer) -> None:
        self.state = state
        self.config = state.config
        self.render = render

    def routes(self) -> list[Route]:
        """The group's paths, with the ACL access and the handler of each method."""
        raise NotImplementedError

    def blocking_query(self, request: Request, view: Callable[[], tuple[int, T]]) -> tuple[int, T]:
        """Answer ``view`` as Consul's blocking query, with the request's ``index`` and ``wait``."""
        min_index, wait = blocking_args(request)
        return self.state.blocking(min_index, wait, view)

    def blocking_reply(
        self, request: Request, view: Callable[[], tuple[int, T]], render: Callable[[T], JSONValue]
    ) -> Reply:
        """A read route's whole answer: ``view`` as a blocking query, rendered, with its index headers."""
        index, value = self.blocking_query(request, view)
        return json_reply(render(value), headers=index_headers(index))
