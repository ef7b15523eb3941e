"""How the remote path shares the gate's backend cap with the workers, between two walks of its
flow map: the flows the filter forwarded since the room was last written (one taken per SYN)
count at once. The fence array is a plain buffer here; the filter's own decrements are written as
the kernel's atomic add would leave them (the end to end case is in test_gate_remote.py)."""

from __future__ import annotations

from dbfence.breaker.passthrough import RemotePath


class Agent:
    """The gate's side: a cap of 10 connections to mysqld, ``held`` by the workers."""

    def __init__(self) -> None:
        self.cap, self.held, self.seen = 10, 0, [-1]

    def room(self, forwarded: int) -> int:
        self.seen.append(forwarded)
        return self.cap - forwarded - self.held


def path_with(counted: int) -> tuple[RemotePath, Agent, memoryview]:
    path = RemotePath(3307, ("10.0.0.11", 3306), ["eth0"])
    words = memoryview(bytearray(24)).cast("Q")
    path._fence_view = words  # the filter's array, as a buffer
    path.passthrough_live = lambda: counted  # type: ignore[method-assign]
    agent = Agent()
    path.on_refresh = agent.room
    return path, agent, words


def take(words: memoryview, flows: int) -> None:
    """The filter forwarding ``flows`` SYNs (and taking one for each, below zero too)."""
    words[2] = (int(words[2]) - flows) % (1 << 64)


def test_flows_forwarded_since_the_last_count_are_counted_without_walking_the_map() -> None:
    path, agent, words = path_with(counted=2)
    path.follow_cap(recount=True)
    assert (agent.seen[-1], words[2]) == (2, 8)
    take(words, 3)
    path.follow_cap(recount=False)  # no walk: the 3 taken count at once
    assert (agent.seen[-1], words[2]) == (5, 5)
    agent.held = 4  # the workers took slots meanwhile: the room shrinks at the next look
    path.follow_cap(recount=False)
    assert (agent.seen[-1], words[2]) == (5, 1)


def test_syns_refused_for_want_of_room_are_not_counted_as_forwarded() -> None:
    path, agent, words = path_with(counted=0)
    agent.cap = 2
    path.follow_cap(recount=True)
    assert words[2] == 2
    take(words, 5)  # two forwarded, three sent to the workers (the word went to -3)
    path.follow_cap(recount=False)
    assert agent.seen[-1] == 2 and words[2] == 0


def test_a_count_replaces_the_estimate_closed_flows_give_their_room_back() -> None:
    path, agent, words = path_with(counted=0)
    path.follow_cap(recount=True)
    take(words, 4)
    path.follow_cap(recount=False)
    assert agent.seen[-1] == 4
    path.passthrough_live = lambda: 1  # type: ignore[method-assign] # three closed
    path.follow_cap(recount=True)
    assert (agent.seen[-1], words[2]) == (1, 9)
