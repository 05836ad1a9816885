"""`make run` as a newcomer runs it, in this clone: wait until the api is ready,
submit the README's first task, see it completed, then stop the fleet with
SIGTERM and see every child gone. Exits non-zero, with the run's log, otherwise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

API = os.environ.get("SMOKE_API", "http://127.0.0.1:8084")
LOG = Path(os.environ.get("SMOKE_LOG", "make-run.log"))


def call(method: str, path: str, body: object = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(API + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_for(what: str, check, seconds: float) -> object:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"smoke: {what} did not happen within {seconds:.0f} s")


def main() -> int:
    with LOG.open("w") as log:
        run = subprocess.Popen(["make", "run"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for("the api ready", lambda: call("GET", "/health/ready")[0] == 200, 180)
        status, task = call("POST", "/api/v1/tasks", {"task_type": "test", "payload": {"message": "hello"}})
        assert status == 201, (status, task)
        done = wait_for("the task completed",
                        lambda: call("GET", f"/api/v1/tasks/{task['task_id']}")[1].get("status") == "completed", 60)
        print(f"smoke: make run answered, task {task['task_id']} completed: {bool(done)}")
    except BaseException:
        print(LOG.read_text()[-6000:], file=sys.stderr)
        raise
    finally:
        os.killpg(run.pid, signal.SIGTERM)
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            raise SystemExit("smoke: the fleet did not stop within 60 s of SIGTERM")
    return 0


if __name__ == "__main__":
    sys.exit(main())
