"""The simulator's api.sora.hk v1 protocol (``ledger sim``, the default).

Envelopes ``{"code", "message", "data"}`` whose ``code`` other than 200 is an error even inside an
HTTP 200, codes 401/1001/1012, ``GET /tasks`` pages (a list, or an object holding one), a price list
and a balance, and signed expiring video URLs on the server's ``/files/`` path.
"""
from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import unquote, urlsplit

from .protocol import Reply, SimProtocol

STATUSES = ("pending", "processing", "completed", "failed")
_TASK_PATH = re.compile(r"^/v1/tasks/([^/]+)$")
_FILE_PATH = re.compile(r"^/files/([^/]+)\.mp4$")


def envelope(code: int, message: str, data: Any = None) -> bytes:
    return json.dumps({"code": code, "message": message, "data": data}, ensure_ascii=False).encode("utf-8")


def validate(body: Any) -> Optional[str]:
    """The first problem with a create request body, in the service's words, or None."""
    if not isinstance(body, dict):
        return "请求体必须是 JSON 对象 (the body must be a JSON object)"
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "prompt 不能为空 (prompt must be a non-empty string)"
    for name in ("is_pro", "remove_watermark"):
        if name in body and not isinstance(body[name], bool):
            return f"{name} 必须是布尔值 ({name} must be true or false, got {body[name]!r})"
    is_pro = body.get("is_pro", False)
    duration = body.get("duration", 10)
    allowed = (10, 15, 25) if is_pro else (10, 15)
    if isinstance(duration, bool) or not isinstance(duration, int) or duration not in allowed:
        model = "Pro" if is_pro else "normal"
        return (f"duration 不支持 (duration must be one of {', '.join(map(str, allowed))} seconds for the "
                f"{model} model, got {duration!r})")
    if body.get("resolution", "horizontal") not in ("horizontal", "vertical"):
        return f"resolution 不支持 (resolution must be horizontal or vertical, got {body['resolution']!r})"
    if body.get("quality", "normal") not in ("normal", "high"):
        return f"quality 不支持 (quality must be normal or high, got {body['quality']!r})"
    image_url = body.get("image_url")
    if image_url not in (None, "") and (
        not isinstance(image_url, str) or urlsplit(image_url).scheme not in ("http", "https")
    ):
        return f"image_url 必须是 http(s) 链接 (image_url must be an http(s) URL, got {image_url!r})"
    return None


class SoraHkProtocol(SimProtocol):
    name = "sora_hk"
    key_hint = "SORA_BASE_URL={url} and SORA_API_KEY={key}"

    def route(self, method: str, path: str, query: Mapping[str, List[str]]) -> Tuple[Optional[str], str]:
        if method == "POST":
            return ("create", "") if path == "/v1/create" else (None, "")
        if path == "/v1/tasks":
            return "tasks", ""
        if path in ("/v1/balance", "/v1/pricing"):
            return path[4:], ""
        match = _TASK_PATH.match(path)
        if match:
            return "task", unquote(match.group(1))
        match = _FILE_PATH.match(path)
        if match:
            return "file", unquote(match.group(1))
        return None, ""

    def create(self, sim: Any, body: Any, task_id: Optional[str]) -> Tuple[Reply, bool]:
        problem = validate(body)
        if problem:
            return Reply(200, envelope(1001, f"参数错误：{problem}")), False
        is_pro = bool(body.get("is_pro", False))
        price = sim.config.pro_price if is_pro else sim.config.normal_price
        task = sim.record_task(
            body["prompt"], price, task_id, is_pro=is_pro, duration=int(body.get("duration", 10)),
            resolution=str(body.get("resolution", "horizontal")),
            quality="high" if is_pro else str(body.get("quality", "normal")),
            remove_watermark=bool(body.get("remove_watermark", True)), image_url=str(body.get("image_url") or ""))
        if task is None:
            balance = sim.current_balance()
            return Reply(200, envelope(1012, f"余额不足：当前余额 {balance} 分，本次需要 {price} 分")), False
        return Reply(200, envelope(200, "操作成功", {
            "task_id": task.task_id, "status": "pending", "cost": price, "created_at": task.created_wall.isoformat(),
        })), True

    def answer(self, sim: Any, route: str, arg: str, query: Mapping[str, List[str]], origin: str) -> Reply:
        if route == "task":
            task = sim.get_task(arg, poll=True)
            if task is None:
                return Reply(404, envelope(404, f"任务不存在 (no task {arg})"))
            return Reply(200, envelope(200, "操作成功", self.view(sim, task, origin)))
        if route == "tasks":
            return self._list(sim, query, origin)
        if route == "balance":
            return Reply(200, envelope(200, "操作成功", {"balance": sim.current_balance()}))
        config = sim.config
        return Reply(200, envelope(200, "操作成功", {"normal_price": config.normal_price, "pro_price": config.pro_price,
                                                   "currency": config.currency, "unit": config.unit}))

    def _list(self, sim: Any, query: Mapping[str, List[str]], origin: str) -> Reply:
        try:
            page = int(query.get("page", ["1"])[0])
            page_size = int(query.get("page_size", ["20"])[0])
        except ValueError:
            return Reply(200, envelope(1001, "参数错误：page 和 page_size 必须是整数"))
        status = query.get("status", [None])[0]
        if page < 1 or not 1 <= page_size <= 100 or (status is not None and status not in STATUSES):
            return Reply(200, envelope(1001, "参数错误：page ≥ 1，1 ≤ page_size ≤ 100，status 取值无效"))
        views = [self.view(sim, task, origin) for task in sim.tasks_newest_first()]
        if status is not None:
            views = [view for view in views if view["status"] == status]
        first = 0 if sim.config.list_ignores_page else (page - 1) * page_size
        items = views[first: first + page_size]
        data: Any = items if sim.config.list_shape == "list" else {
            "tasks": items, "total": len(views), "page": page, "page_size": page_size}
        return Reply(200, envelope(200, "操作成功", data))

    def view(self, sim: Any, task: Any, origin: str) -> Dict[str, Any]:
        from .server import GENERATION_FAILED_MESSAGE, POLICY_MESSAGE

        status, progress, ends_at = sim.timeline(task)
        done = status in ("completed", "failed")
        view = {
            "task_id": task.task_id, "status": status, "progress": progress, "prompt": task.prompt,
            "is_pro": task.is_pro, "duration": task.duration, "resolution": task.resolution, "quality": task.quality,
            "remove_watermark": task.remove_watermark, "image_url": task.image_url,
            "video_url": sim.signed_url(task.task_id, origin) if status == "completed" else "",
            "error_msg": {"policy": POLICY_MESSAGE, "error": GENERATION_FAILED_MESSAGE}.get(task.outcome, "")
            if status == "failed" else "",
            "cost": task.cost,
            "created_at": task.created_wall.isoformat(),
            "completed_at": (task.created_wall + timedelta(seconds=round(ends_at))).isoformat() if done else None,
        }
        if not sim.config.list_shows_cost:
            del view["cost"]
        return view

    def settings(self, sim: Any) -> Dict[str, str]:
        return {"PROVIDER": "sora_hk", "SORA_BASE_URL": sim.base_url, "SORA_API_KEY": sim.config.api_key or "sora-any"}

    def job_price(self, sim: Any) -> int:
        return int(sim.config.normal_price)

    def error(self, kind: str, message: str, **details: Any) -> Reply:
        if kind == "no_route":
            return Reply(404, envelope(404, f"接口不存在 (no such endpoint: {message})"))
        if kind == "unauthorised":
            return Reply(401, envelope(401, f"API密钥无效或已禁用: {message.split(': ', 1)[-1]}"))
        if kind == "server_in_200":
            return Reply(200, envelope(500, "服务器内部错误"))
        if kind == "server":
            return Reply(500, envelope(500, "服务器内部错误"))
        if kind == "rate_limited":
            return Reply(429, envelope(429, "请求过于频繁，请稍后再试"))
        if kind == "in_200":  # any documented (or undocumented) error code inside an HTTP 200
            return Reply(200, envelope(int(details.get("code") or 1001), message or "参数错误"))
        return Reply(404, envelope(404, message))


PROTOCOL = SoraHkProtocol()
