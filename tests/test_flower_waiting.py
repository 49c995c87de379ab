"""Flower shows a waiting job once it is released (published), by its name: its task-sent
event carries the job's name (:class:`offload.broker.app._ShadowNamedAMQP`)."""

from __future__ import annotations

import re
import uuid
from typing import Any

from offload.broker.status import JobStatus
from tests.conftest import Platform, wait_for
from tests.test_flower import api_tasks, flower, render, wait_until_listening

__all__ = ["flower"]  # the fixture, used here


def test_flower_shows_a_released_job_by_its_name(private_platform: Platform, flower: str) -> None:
    client = private_platform.client
    tag = uuid.uuid4().hex[:12]
    wait_until_listening(client, flower, tag)

    parent = client.submit(
        "offload/base", ["sh", "-c", "echo hi > /offload/out/o"], name=f"up-{tag}"
    )
    child_name = f"released-{tag}"
    child = client.submit(
        "offload/base", ["cat", "/offload/in/x"], inputs={"x": parent.output("o")}, name=child_name
    )
    assert child.status() is JobStatus.WAITING
    wait_for(lambda: parent.id in api_tasks(flower), 10, "Flower to list the parent")
    assert not [t for t in api_tasks(flower) if t.startswith(child.id)]  # not published yet

    private_platform.start_worker()
    assert child.result(timeout=60).ok

    def shown() -> dict[str, Any] | None:
        for task_id, task in api_tasks(flower).items():
            if task_id.startswith(child.id) and task.get("state") == "SUCCESS":
                return dict(task, id=task_id)
        return None

    task = wait_for(shown, 20, "Flower to show the released job", interval=0.5)
    assert task["name"] == child_name
    page = render(f"{flower}/tasks")
    row = re.search(rf'<tr id="{re.escape(task["id"])}"[^>]*>(.*?)</tr>', page, re.S)
    assert row is not None, f"no row for {task['id']} in the rendered tasks table"
    assert f">{child_name}</a>" in row.group(1) and ">SUCCESS<" in row.group(1)
