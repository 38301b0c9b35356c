"""Identifiers: shape, order, and no repeats across threads and forked processes."""

from __future__ import annotations

import os
import re
import threading
import time

from kmsg_webhook.ids import new_id


def test_an_id_is_prefix_millisecond_time_and_80_random_bits() -> None:
    before = time.time_ns() // 1_000_000
    value = new_id("dlv")
    after = time.time_ns() // 1_000_000
    match = re.fullmatch(r"dlv_([0-9a-f]{12})([0-9a-f]{20})", value)
    assert match is not None
    assert before <= int(match.group(1), 16) <= after


def test_ids_sort_by_creation_time() -> None:
    first = new_id("x")
    time.sleep(0.002)
    assert new_id("x") > first


def test_threads_never_get_the_same_id() -> None:
    found: list[list[str]] = [[] for _ in range(4)]

    def make(into: list[str]) -> None:
        into.extend(new_id("t") for _ in range(3000))

    threads = [threading.Thread(target=make, args=(into,)) for into in found]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for into in found for i in into]
    assert len(set(every)) == len(every) == 12_000


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    new_id("p")  # the parent now holds unused random parts
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        os.write(write, " ".join(new_id("p")[-20:] for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {new_id("p")[-20:] for _ in range(50)}
    assert len(child) == 50
    assert not child & parent
