"""An independent fake of both video APIs, written from the protocol notes alone.

It shares no code with ``ledger.sim``, so a test or a benchmark that passes against it does not
merely pass against the project's own idea of the API. What it can do that the simulator cannot:
bill a price other than the one it lists (a reseller that raised its prices, or a list in another
unit), answer creates slowly, hold progress back (a queue, then a jump), serve bytes that are not an
MP4, and stand for a busy account (other clients' tasks in the list).

    with FakeApi(protocol="sora_hk", charge=60, listed=30, create_delay=1.0) as api:
        ...  # point ledger at api.base_url; api.charged is what it billed
"""
from __future__ import annotations

import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional
from urllib.parse import parse_qs, urlsplit

SAMPLE_MP4 = Path(__file__).resolve().parents[1] / "ledger" / "sim" / "sample.mp4"
CST = timezone(timedelta(hours=8))


@dataclass
class FakeTask:
    task_id: str
    prompt: str
    body: Dict[str, Any]
    created: float  # time.time()
    cost: int
    others: bool = False  # made by another client of the account


@dataclass
class FakeApi:
    """A running fake API on 127.0.0.1 (``base_url``); a context manager."""

    protocol: str = "sora_hk"  # or "openai"
    charge: int = 30  # cents billed per create (openai: per create too, whatever the seconds)
    listed: Optional[Any] = 30  # what GET /pricing says for the normal model (None: no /pricing)
    listed_pro: Optional[Any] = 150
    cost_in_answer: Optional[Any] = "charge"  # the create answer's "cost": "charge", a fixed value, or None
    create_delay: float = 0.0  # seconds between billing a create and answering it
    gen_seconds: float = 0.5
    progress: str = "linear"  # "linear", "late" (0 % for the first 80 %, then linear) or "none"
    video: Optional[bytes] = None  # None: the sample MP4
    balance: int = 10**9
    busy: float = 0.0  # other clients' tasks created per second, shown in the list
    latency: float = 0.0  # seconds added before every answer (a far-away API)
    file_delay: float = 0.0  # seconds before a video's bytes are sent (a slow link)
    tasks: Dict[str, FakeTask] = field(default_factory=dict)
    charged: int = 0
    creates: int = 0
    connections: int = 0  # TCP connections accepted
    requests: Dict[str, int] = field(default_factory=dict)
    timeline: List[Any] = field(default_factory=list)  # (time.time(), route, "start"|"end") of every request

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._video = self.video if self.video is not None else SAMPLE_MP4.read_bytes()
        handler = type("Handler", (_Handler,), {"api": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_port}/v1"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        if self.busy:
            threading.Thread(target=self._others, daemon=True).start()

    def __enter__(self) -> "FakeApi":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def env(self, key: str = "sora-fake0000000000000000000000000000") -> Dict[str, str]:
        """The settings that point ledger here."""
        if self.protocol == "openai":
            return {"PROVIDER": "openai", "OPENAI_BASE_URL": self.base_url, "OPENAI_API_KEY": key}
        return {"PROVIDER": "sora_hk", "SORA_BASE_URL": self.base_url, "SORA_API_KEY": key}

    def own_tasks(self) -> List[FakeTask]:
        with self._lock:
            return [t for t in self.tasks.values() if not t.others]

    # --- what the handler calls ----------------------------------------------------------------

    def create(self, body: Dict[str, Any]) -> FakeTask:
        with self._lock:
            task = FakeTask(("video_" if self.protocol == "openai" else "") + str(uuid.uuid4()),
                            str(body.get("prompt", "")), body, time.time(), self.charge)
            self.tasks[task.task_id] = task
            self.charged += self.charge
            self.balance -= self.charge
            self.creates += 1
        return task

    def percent(self, task: FakeTask) -> int:
        share = (time.time() - task.created) / self.gen_seconds if self.gen_seconds else 1.0
        if share >= 1.0:
            return 100
        if self.progress == "none":
            return 0
        if self.progress == "late":
            return 0 if share < 0.8 else int(100 * (share - 0.8) / 0.2)
        return int(100 * share)

    def newest_first(self) -> List[FakeTask]:
        with self._lock:
            return sorted(self.tasks.values(), key=lambda t: t.created, reverse=True)

    def _others(self) -> None:
        rng = random.Random(7)
        while not self._stop.wait(rng.expovariate(self.busy)):
            with self._lock:
                task = FakeTask(str(uuid.uuid4()), f"someone else's shot {rng.random()}", {}, time.time(), 0,
                                others=True)
                self.tasks[task.task_id] = task


class _Handler(BaseHTTPRequestHandler):
    api: FakeApi
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def setup(self) -> None:  # one handler per TCP connection (keep-alive serves many requests on it)
        super().setup()
        with self.api._lock:
            self.api.connections += 1

    # --- plumbing ------------------------------------------------------------------------------

    def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _ok(self, data: Any) -> None:
        if self.api.protocol == "openai":
            self._send(200, data)
        else:
            self._send(200, {"code": 200, "message": "操作成功", "data": data})

    def _not_found(self) -> None:
        if self.api.protocol == "openai":
            self._send(404, {"error": {"message": "not found", "type": "invalid_request_error", "param": None,
                                       "code": "not_found"}})
        else:
            self._send(404, {"code": 404, "message": "任务不存在", "data": None})

    def _count(self, route: str) -> None:
        with self.api._lock:
            self.api.requests[route] = self.api.requests.get(route, 0) + 1
            self.api.timeline.append((time.time(), route, "start"))
        time.sleep(self.api.latency)

    # --- routes --------------------------------------------------------------------------------

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        path = urlsplit(self.path).path
        if path not in ("/v1/create", "/v1/videos"):
            self._count("other")
            return self._not_found()
        self._count("create")
        task = self.api.create(body)
        time.sleep(self.api.create_delay)  # billed already: the answer is what is slow
        if self.api.protocol == "openai":
            return self._ok(self._video_object(task))
        answer: Dict[str, Any] = {"task_id": task.task_id, "status": "pending"}
        cost = self.api.cost_in_answer
        if cost is not None:
            answer["cost"] = task.cost if cost == "charge" else cost
        self._ok(answer)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        api = self.api
        if url.path == "/_fake/stats":  # for a benchmark that runs the fake in its own process
            with api._lock:
                return self._send(200, {"charged": api.charged, "creates": api.creates, "requests": api.requests,
                                        "connections": api.connections})
        if url.path.startswith("/files/"):
            self._count("file")
            time.sleep(api.file_delay)
            self._send(200, api._video, "video/mp4")
            with api._lock:
                api.timeline.append((time.time(), "file", "end"))
            return None
        if api.protocol == "openai":
            return self._openai(parts, query)
        if url.path == "/v1/balance":
            self._count("balance")
            return self._ok({"balance": api.balance})
        if url.path == "/v1/pricing":
            self._count("pricing")
            if api.listed is None:
                return self._not_found()
            return self._ok({"normal_price": api.listed, "pro_price": api.listed_pro, "currency": "USD",
                             "unit": "task"})
        if url.path == "/v1/tasks":
            self._count("tasks")
            page, size = int(query.get("page", 1)), int(query.get("page_size", 20))
            tasks = api.newest_first()[(page - 1) * size:page * size]
            return self._ok([self._sora_task(t) for t in tasks])
        if len(parts) == 3 and parts[:2] == ["v1", "tasks"]:
            self._count("task")
            task = api.tasks.get(parts[2])
            return self._ok(self._sora_task(task)) if task else self._not_found()
        self._count("other")
        self._not_found()

    def _openai(self, parts: List[str], query: Dict[str, str]) -> None:
        api = self.api
        if parts == ["v1", "videos"]:
            self._count("tasks")
            tasks = api.newest_first()
            after = query.get("after")
            if after:
                ids = [t.task_id for t in tasks]
                tasks = tasks[ids.index(after) + 1:] if after in ids else []
            limit = int(query.get("limit", 20))
            page = tasks[:limit]
            return self._ok({"object": "list", "data": [self._video_object(t) for t in page],
                             "first_id": page[0].task_id if page else None,
                             "last_id": page[-1].task_id if page else None, "has_more": len(tasks) > limit})
        if len(parts) >= 3 and parts[:2] == ["v1", "videos"]:
            task = api.tasks.get(parts[2])
            if task is None:
                self._count("task")
                return self._not_found()
            if parts[3:] == ["content"]:
                self._count("content")
                time.sleep(api.file_delay)
                self._send(200, api._video, "video/mp4")
                with api._lock:
                    api.timeline.append((time.time(), "content", "end"))
                return None
            self._count("task")
            return self._ok(self._video_object(task))
        self._count("other")
        self._not_found()

    # --- task shapes ---------------------------------------------------------------------------

    def _sora_task(self, task: FakeTask) -> Dict[str, Any]:
        percent = self.api.percent(task)
        data = {"task_id": task.task_id, "prompt": task.prompt, "cost": task.cost,
                "status": "completed" if percent >= 100 else "processing" if percent else "pending",
                "progress": percent, "is_pro": bool(task.body.get("is_pro", False)),
                "created_at": datetime.fromtimestamp(task.created, CST).isoformat(timespec="seconds"),
                "error_msg": ""}
        if percent >= 100:
            data["video_url"] = f"http://{self.headers['Host']}/files/{task.task_id}.mp4"
        return data

    def _video_object(self, task: FakeTask) -> Dict[str, Any]:
        percent = self.api.percent(task)
        return {"id": task.task_id, "object": "video", "model": task.body.get("model", "sora-2"),
                "status": "completed" if percent >= 100 else "in_progress" if percent else "queued",
                "progress": percent, "prompt": task.prompt, "seconds": task.body.get("seconds", "4"),
                "size": task.body.get("size", "720x1280"), "created_at": int(task.created)}


def main() -> None:
    """``python -m tests.fake_api --protocol sora_hk --gen-seconds 5``: serve until killed; the first
    line printed is the base URL."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--protocol", default="sora_hk", choices=("sora_hk", "openai"))
    parser.add_argument("--gen-seconds", type=float, default=5.0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--create-delay", type=float, default=0.0)
    parser.add_argument("--progress", default="linear", choices=("linear", "late", "none"))
    parser.add_argument("--busy", type=float, default=0.0)
    args = parser.parse_args()
    api = FakeApi(protocol=args.protocol, gen_seconds=args.gen_seconds, latency=args.latency,
                  create_delay=args.create_delay, progress=args.progress, busy=args.busy)
    print(api.base_url, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
