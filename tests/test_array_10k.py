"""An array of 10,000 no-op items runs to the end through a real worker, every item's status
right (issue 16, part 7): batched, 500 items a warm container, on a platform of its own."""

from __future__ import annotations

import time

import pytest

from offload.broker.status import JobStatus

from .conftest import Platform

N = 10_000


@pytest.mark.timeout(600)
def test_ten_thousand_items_run_to_the_end(private_platform: Platform) -> None:
    p = private_platform
    p.env["OFFLOAD_WORKER_SLOTS"] = "2"
    p.start_worker()
    c = p.client
    t0 = time.monotonic()
    array = c.map("offload/base", ["true"], each=[{}] * N, batch=500, cache=False, retries=0)
    assert len(array) == N
    st = array.status()
    while not st.done:
        assert time.monotonic() - t0 < 540, f"not done in 9 minutes: {st.by_status}"
        time.sleep(2)
        st = array.status()
    assert st.by_status == {JobStatus.SUCCEEDED: N} and st.failed == []
    assert array.statuses() == [JobStatus.SUCCEEDED] * N
    some = [array[0], array[4999], array[N - 1]]
    assert [j.record().attempt for j in some] == [1, 1, 1]
    assert [j.record().exit_code for j in some] == [0, 0, 0]
