"""In a real ipykernel, driven over its ZMQ channels as a notebook frontend drives it."""

from __future__ import annotations

import os
import queue
import threading
import time

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("no_leaks")]


class Frontend:
    """A minimal notebook frontend: runs cells, collects output and widget state."""

    def __init__(self, kc):
        self.kc = kc
        self.widgets: dict[str, dict] = {}  # comm id -> latest state
        self.messages: queue.Queue = queue.Queue()
        self._stop = False
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self):
        while not self._stop:
            try:
                msg = self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "comm_open":
                self.widgets[content["comm_id"]] = dict(content["data"].get("state", {}))
            elif kind == "comm_msg" and content["data"].get("method") == "update":
                self.widgets.setdefault(content["comm_id"], {}).update(
                    content["data"].get("state", {})
                )
            self.messages.put(msg)

    def execute(self, code: str, timeout: float = 300) -> dict:
        msg_id = self.kc.execute(code)
        deadline = time.monotonic() + timeout
        while True:
            reply = self.kc.get_shell_msg(timeout=max(deadline - time.monotonic(), 1))
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"]

    def button(self, description: str) -> str | None:
        for comm_id, state in list(self.widgets.items()):
            if state.get("_model_name") == "ButtonModel" and state.get(
                "description", ""
            ).startswith(description):
                return comm_id
        return None

    def click(self, comm_id: str, subshell_id: str | None = None) -> None:
        # What the browser's widget manager sends for a button click.
        msg = self.kc.session.msg(
            "comm_msg",
            {"comm_id": comm_id, "data": {"method": "custom", "content": {"event": "click"}}},
        )
        if subshell_id:
            msg["header"]["subshell_id"] = subshell_id
        self.kc.shell_channel.send(msg)

    def html_values(self) -> str:
        return "\n".join(str(s.get("value", "")) for s in self.widgets.values())

    def close(self):
        self._stop = True
        self._thread.join(2)


@pytest.fixture
def frontend(namespace):
    from jupyter_client.manager import start_new_kernel

    env = dict(os.environ, MLCONTAINER_NAMESPACE=namespace)
    km, kc = start_new_kernel(kernel_name="python3", env=env)
    fe = Frontend(kc)
    try:
        assert fe.execute("%load_ext mlcontainer_magics")["status"] == "ok"
        yield fe
    finally:
        fe.close()
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_widget_final_state_says_done_with_the_snapshot_id(frontend):
    reply = frontend.execute("%%containerize -n widget-done\nprint('hello')")
    assert reply["status"] == "ok"
    time.sleep(0.5)
    html = frontend.html_values()
    assert 'data-status="done"' in html
    sid = frontend.execute(
        "from mlcontainer_magics.core.store import Store\nprint(Store().get('widget-done')['id'])"
    )
    assert reply["status"] == "ok"
    # The reply (shell) can come before the printed id (iopub): wait for the id a while.
    ids: list[str] = []
    deadline = time.monotonic() + 10
    while not ids and time.monotonic() < deadline:
        ids = [
            m["content"]["text"].strip()
            for m in _drain(frontend)
            if m["msg_type"] == "stream" and len(m["content"]["text"].strip()) == 12
        ]
        time.sleep(0.05)
    assert ids and f'data-snapshot="{ids[-1]}"' in html, sid


def test_out_of_memory_widget_says_so(frontend):
    reply = frontend.execute("%%containerize --memory 32m\nx = bytearray(300 * 2**20)")
    assert reply["status"] == "error" and reply["ename"] == "RunError"
    time.sleep(0.5)
    html = frontend.html_values().lower()
    assert "out of memory" in html


def _drain(fe: Frontend):
    out = []
    while True:
        try:
            out.append(fe.messages.get_nowait())
        except queue.Empty:
            return out
