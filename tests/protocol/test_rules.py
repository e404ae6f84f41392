"""The connection rules without a socket: states, hello first and once, request ids, encodings."""

from __future__ import annotations

import json
from dataclasses import dataclass

import msgpack
import pytest

from protocol import Encoding, ErrorCode, Generate, Hello, ProtocolError
from protocol.rules import (
    ConnectionState,
    IllegalTransition,
    RequestTable,
    ServerRules,
    StateMachine,
)

HELLO_JSON = json.dumps({"type": "hello", "protocol": 1})
HELLO_MSGPACK = msgpack.packb({"type": "hello", "protocol": 1})
GENERATE = json.dumps({"type": "generate", "id": "g", "prompt": "hi"})


@dataclass(eq=False)
class Entry:
    encoding: Encoding


def test_the_state_machine_moves_forward_only() -> None:
    machine = StateMachine()
    machine.move(ConnectionState.READY)
    with pytest.raises(IllegalTransition):
        machine.move(ConnectionState.AWAITING_HELLO)
    assert machine.close() and not machine.close()
    with pytest.raises(IllegalTransition):
        machine.move(ConnectionState.READY)
    straight = StateMachine()
    assert straight.close() and straight.state is ConnectionState.CLOSING


def test_hello_must_come_first_and_only_once() -> None:
    rules: ServerRules[Entry] = ServerRules(max_inflight=4)
    with pytest.raises(ProtocolError) as first:
        rules.receive(GENERATE)
    assert first.value.code is ErrorCode.HELLO_REQUIRED and first.value.closes_connection
    assert isinstance(rules.receive(HELLO_MSGPACK), Hello)
    rules.accept_hello(Encoding.MSGPACK)
    assert isinstance(rules.receive(GENERATE), Generate)
    with pytest.raises(ProtocolError) as again:
        rules.receive(HELLO_JSON)
    assert again.value.code is ErrorCode.INVALID_FIELD and not again.value.closes_connection


def test_answers_go_out_in_their_requests_encoding_else_the_hellos() -> None:
    rules: ServerRules[Entry] = ServerRules(max_inflight=4)
    rules.receive(HELLO_MSGPACK)
    rules.accept_hello(Encoding.MSGPACK)
    rules.requests.admit("j", Entry(Encoding.JSON))
    assert rules.answer_encoding("j") is Encoding.JSON
    assert rules.answer_encoding("unknown") is Encoding.MSGPACK
    assert rules.answer_encoding(None) is Encoding.MSGPACK


def test_request_ids_are_unique_while_in_flight_and_free_after() -> None:
    table: RequestTable[Entry] = RequestTable(max_inflight=2)
    first = table.admit("a", Entry(Encoding.JSON))
    with pytest.raises(ProtocolError) as dup:
        table.admit("a", Entry(Encoding.JSON))
    assert dup.value.code is ErrorCode.DUPLICATE_REQUEST_ID and dup.value.request_id == "a"
    table.admit("b", Entry(Encoding.JSON))
    with pytest.raises(ProtocolError) as full:
        table.admit("c", Entry(Encoding.JSON))
    assert full.value.code is ErrorCode.TOO_MANY_REQUESTS and full.value.retryable
    assert table.end("a", first) and "a" not in table
    reused = table.admit("a", Entry(Encoding.MSGPACK))
    assert not table.end("a", first)  # a stale end does not remove the id's new request
    assert table.get("a") is reused and len(table) == 2
