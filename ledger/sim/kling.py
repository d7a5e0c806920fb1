"""The simulator's Kling (可灵) protocol (``ledger sim --protocol kling``).

``{"code", "message", "request_id", "data"}`` envelopes, code 0 for success and the official
codes with their HTTP statuses otherwise; ``POST /v1/videos/{text2video|image2video}`` taking an
``external_task_id``; tasks polled and listed under their kind's path; millisecond timestamps; no
progress; a finished task's ``final_unit_deduction``; resource packs at ``/account/costs`` at the
domain root, outside ``/v1`` (credits: 1 credit = ¥1 = 100 fen of the simulator's balance, which
the create charges at once). A Bearer of the API key passes, and so does a JWT (HS256, ``iss`` =
the access key) signed with the secret key the protocol is given.

The documentation leaves three facts open; each is an option of ``KlingProtocol`` (a test
replaces ``sim.protocol`` with one made otherwise):

* ``lookup``: where the look-up by ``external_task_id`` is and what it answers — ``OBJECT`` (the
  default, as the official page has it: ``GET /videos/{kind}?external_task_id=X`` answers the one
  task object, code 1203 when there is none), ``QUERY`` (a gateway's reading: the same query
  answers a list of the matching tasks) or ``PATH`` (reading B: ``GET /videos/{kind}/X``, the
  filter being ignored: the list as it is);
* ``duplicates``: a create repeating an ``external_task_id`` is ``REJECT``ed (code 1201, nothing
  billed: the default) or ``ACCEPT``ed (a second task, billed);
* ``max_running``: a concurrency limit (code 1303, HTTP 429), with ``busy_retry_after`` whole seconds
  as its ``Retry-After`` (None: none, as the documentation shows none).
"""
from __future__ import annotations

import re
import threading
import time
import uuid
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import unquote, urlsplit

import jwt

from .protocol import Reply, SimProtocol, json_reply

NAME = "kling"
OBJECT, QUERY, PATH = "object", "query", "path"  # the look-up by external_task_id: reading A (two forms), B
REJECT, ACCEPT = "reject", "accept"  # a repeated external_task_id
TEXT, IMAGE = "text2video", "image2video"
# The credentials the simulator signs JWTs with unless told others.
ACCESS_KEY = "AKsim5aQ2mX8vN3rT6yW9bC4dF7gH1jK0"
SECRET_KEY = "SKsim7pL3nR8tV2xZ5cB9mQ4wE6yU1iO0aS"
FIVE_TEN = ("5", "10")
# model -> (the modes that take sound "on"; durations; takes cfg_scale), as the official pages have it
MODELS: Mapping[str, Tuple[Tuple[str, ...], Tuple[str, ...], bool]] = {
    "kling-v2-5-turbo": ((), FIVE_TEN, False), "kling-v2-6": (("pro",), FIVE_TEN, False),
    "kling-v2-1-master": ((), FIVE_TEN, False), "kling-v3": (("std", "pro"), tuple(map(str, range(3, 16))), True)}
# Fen per second by tier, as the public list has it.
PRICES: Mapping[str, int] = {"std": 60, "pro": 80, "std+sound": 80, "pro+sound": 100}
STATUS_WORDS = {"pending": "submitted", "processing": "processing", "completed": "succeed", "failed": "failed"}
MAX_PAGE_SIZE, MAX_PAGE = 500, 1000
_CREATE = re.compile(r"^/v1/videos/(text2video|image2video)$")
_TASK = re.compile(r"^/v1/videos/(text2video|image2video)/([^/]+)$")
_FILE = re.compile(r"^/files/([^/]+)\.mp4$")


def envelope(code: int, message: str, data: Any = None) -> Dict[str, Any]:
    """An answer of this API."""
    return {"code": code, "message": message, "request_id": str(uuid.uuid4()), "data": data}


def refusal(status: int, code: int, message: str) -> Reply:
    return json_reply(status, envelope(code, message))


def validate(body: Any, kind: str) -> Optional[str]:
    """The first problem with a create body, in the API's words, or None."""
    if not isinstance(body, dict):
        return "请求体必须是 JSON 对象"
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > 2500:
        return "prompt 不能为空且不超过 2500 个字符"
    model = body.get("model_name", "kling-v2-5-turbo")
    if model not in MODELS:
        return f"model_name 不支持: {model!r}"
    sound_modes, durations, cfg = MODELS[model]
    mode = body.get("mode", "std")
    checks = [(body.get("duration", "5") in durations, f"{model} 的 duration 取值: {', '.join(durations)}"),
              (mode in ("std", "pro"), "mode 必须是 std 或 pro"),
              ("sound" not in body or (sound_modes and body["sound"] in ("on", "off")), f"{model} 不支持 sound"),
              (body.get("sound") != "on" or mode in sound_modes, f"{model} 的 {mode} 模式仅生成无声视频"),
              ("cfg_scale" not in body or cfg, f"{model} 不支持 cfg_scale"),
              (_cfg_ok(body.get("cfg_scale", 0.5)), "cfg_scale 取值范围 [0, 1]"),
              (len(str(body.get("negative_prompt", ""))) <= 2500, "negative_prompt 不超过 2500 个字符")]
    checks += _kind_checks(body, kind)
    return next((message for ok, message in checks if not ok), None)


def _kind_checks(body: Mapping[str, Any], kind: str) -> List[Tuple[bool, str]]:
    image = body.get("image")
    if kind == IMAGE:
        return [(isinstance(image, str) and urlsplit(image).scheme in ("http", "https"), "image 必须是图片 URL"),
                ("aspect_ratio" not in body, "image2video 不接受 aspect_ratio")]
    return [("image" not in body, "text2video 不接受 image"),
            (body.get("aspect_ratio", "16:9") in ("16:9", "9:16", "1:1"), "aspect_ratio 必须是 16:9、9:16 或 1:1")]


def _cfg_ok(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


def price(body: Mapping[str, Any]) -> int:
    """Fen for one video of this body."""
    tier = str(body.get("mode", "std")) + ("+sound" if body.get("sound") == "on" else "")
    return PRICES[tier] * int(body.get("duration", "5"))


class KlingProtocol(SimProtocol):
    """The Kling API, as ``ledger sim --protocol kling`` speaks it."""

    name = NAME
    routes = ("lookup",)  # the list asked with external_task_id: a route of its own, for faults and counts

    def __init__(self, *, lookup: str = OBJECT, duplicates: str = REJECT, max_running: Optional[int] = None,
                 busy_retry_after: Optional[int] = None, access_key: str = ACCESS_KEY,
                 secret_key: str = SECRET_KEY) -> None:
        if lookup not in (OBJECT, QUERY, PATH) or duplicates not in (REJECT, ACCEPT):
            raise ValueError(f"lookup is {OBJECT}, {QUERY} or {PATH}, duplicates {REJECT} or {ACCEPT}")
        self.lookup, self.duplicates = lookup, duplicates
        self.max_running, self.busy_retry_after = max_running, busy_retry_after
        self.access_key, self.secret_key = access_key, secret_key
        self.key_hint = (f"PROVIDER=kling, KLING_BASE_URL={{url}} and KLING_API_KEY={{key}} (or KLING_ACCESS_KEY="
                         f"{access_key} and KLING_SECRET_KEY={secret_key})")
        # The server hands ``create`` the body only: the kind its path named is kept here meanwhile,
        # in the handler thread that routes the request and then creates.
        self._posted = threading.local()

    def route(self, method: str, path: str, query: Mapping[str, List[str]]) -> Tuple[Optional[str], str]:
        create, task, file = _CREATE.match(path), _TASK.match(path), _FILE.match(path)
        if method == "POST":
            self._posted.kind = create.group(1) if create else None
            return ("create", "") if create else (None, "")
        if path == "/account/costs":  # at the domain root, as the official page has it
            return "balance", ""
        if create:
            return ("lookup" if "external_task_id" in query else "tasks"), create.group(1)
        if task:
            return "task", f"{task.group(1)}/{unquote(task.group(2))}"
        return ("file", unquote(file.group(1))) if file else (None, "")

    def authorise(self, headers: Mapping[str, str], key: Optional[str]) -> Optional[Reply]:
        """The API key as a Bearer passes, and so does a valid JWT; anything passes without a key."""
        header = headers.get("Authorization", "")
        presented = header[7:] if header.lower().startswith("bearer ") else header
        if key is None or presented == key:
            return None
        if not presented:
            return refusal(401, 1001, "Authorization 为空")
        problem = self._jwt_problem(presented)
        if problem is None:
            return None
        code, why = problem
        # Like many services, the answer echoes what it got, so clients must mask it.
        return refusal(401, code, f"{why}: {presented}")

    def _jwt_problem(self, token: str) -> Optional[Tuple[int, str]]:
        try:
            claims = jwt.decode(token, self.secret_key, algorithms=["HS256"],
                                options={"require": ["iss", "exp", "nbf"]})
        except (jwt.ExpiredSignatureError, jwt.InvalidSignatureError):
            return 1004, "鉴权失败：token 已过期或签名无效"
        except jwt.ImmatureSignatureError:
            return 1003, "鉴权失败：token 尚未生效"
        except jwt.InvalidTokenError:
            return 1002, "鉴权失败：Authorization 无效"
        return None if claims.get("iss") == self.access_key else (1002, "鉴权失败：access key 不存在")

    def create(self, sim: Any, body: Any, task_id: Optional[str]) -> Tuple[Reply, bool]:
        kind = getattr(self._posted, "kind", None) or (IMAGE if isinstance(body, dict) and "image" in body else TEXT)
        self._posted.kind = None
        problem = validate(body, kind)
        if problem:
            return refusal(400, 1201, f"参数错误：{problem}"), False
        from .server import POLICY_MESSAGE, POLICY_TRIGGER

        if POLICY_TRIGGER in body["prompt"].lower():  # the input check refuses before anything is made
            return refusal(400, 1301, POLICY_MESSAGE), False
        refused = self._refused(sim, body.get("external_task_id"))
        if refused is not None:
            return refused, False
        return self._record(sim, body, task_id, kind)

    def _refused(self, sim: Any, external: Optional[str]) -> Optional[Reply]:
        """A repeated external_task_id (when rejected), or the concurrency limit reached."""
        repeated = external and sim.find_task(lambda t: t.extra.get("external_task_id") == external)
        if repeated and self.duplicates == REJECT:
            return refusal(400, 1201, f"参数错误：external_task_id {external} 已存在 (must be unique within your account)")
        if self.max_running is not None and self._running(sim) >= self.max_running:
            return self.retry_after(refusal(429, 1303, "并发任务超过资源包限制 (parallel task limit reached)"),
                                    self.busy_retry_after)
        return None

    def _record(self, sim: Any, body: Mapping[str, Any], task_id: Optional[str], kind: str) -> Tuple[Reply, bool]:
        cost = price(body)
        extra = {"kind": kind, "external_task_id": body.get("external_task_id"), "body": dict(body)}
        task = sim.record_task(body["prompt"], cost, task_id, model=str(body.get("model_name", "kling-v2-5-turbo")),
                               duration=int(body.get("duration", "5")), resolution=str(body.get("aspect_ratio", "")),
                               image_url=str(body.get("image") or ""), is_pro=body.get("mode") == "pro", extra=extra)
        if task is None:
            return refusal(429, 1102, f"资源包已耗尽：剩余 {sim.current_balance() / 100:.2f} 点，本次需要 {cost / 100:.2f} 点"), False
        view = self.view(sim, task, sim.origin)
        answer = {key: view[key] for key in ("task_id", "task_info", "created_at", "updated_at")}
        return json_reply(200, envelope(0, "SUCCEED", {**answer, "task_status": "submitted"})), True

    @staticmethod
    def _running(sim: Any) -> int:
        return sum(sim.timeline(task)[0] in ("pending", "processing") for task in sim.tasks_newest_first())

    def answer(self, sim: Any, route: str, arg: str, query: Mapping[str, List[str]], origin: str) -> Reply:
        if route == "task":
            kind, _, task_id = arg.partition("/")
            return self._task(sim, kind, task_id, origin)
        if route == "lookup" and self.lookup in (OBJECT, QUERY):
            external = query["external_task_id"][0]
            views = [self.view(sim, t, origin) for t in sim.tasks_newest_first()
                     if t.extra.get("kind") == arg and t.extra.get("external_task_id") == external]
            if self.lookup == QUERY:
                return json_reply(200, envelope(0, "SUCCEED", views))
            if not views:
                return refusal(404, 1203, f"任务不存在 (no {arg} task with external_task_id {external})")
            return json_reply(200, envelope(0, "SUCCEED", views[0]))
        if route in ("tasks", "lookup"):  # reading B knows no such filter: the list as it is
            return self._list(sim, arg, query, origin)
        if route == "balance":
            return self._costs(sim, query)
        return self.error("no_route", f"GET {route}")

    def _task(self, sim: Any, kind: str, task_id: str, origin: str) -> Reply:
        task = sim.get_task(task_id, poll=True)
        if (task is None or task.extra.get("kind") != kind) and self.lookup == PATH:
            task = sim.find_task(lambda t: t.extra.get("kind") == kind and t.extra.get("external_task_id") == task_id)
        if task is None or task.extra.get("kind") != kind:
            return refusal(404, 1203, f"任务不存在 (no {kind} task {task_id})")
        return json_reply(200, envelope(0, "SUCCEED", self.view(sim, task, origin)))

    def _list(self, sim: Any, kind: str, query: Mapping[str, List[str]], origin: str) -> Reply:
        try:
            page = int(query.get("pageNum", ["1"])[0])
            size = int(query.get("pageSize", ["30"])[0])
        except ValueError:
            return refusal(400, 1201, "参数错误：pageNum 和 pageSize 必须是整数")
        if not (1 <= page <= MAX_PAGE and 1 <= size <= MAX_PAGE_SIZE):
            return refusal(400, 1201, f"参数错误：1 ≤ pageNum ≤ {MAX_PAGE}，1 ≤ pageSize ≤ {MAX_PAGE_SIZE}")
        tasks = [t for t in sim.tasks_newest_first() if t.extra.get("kind") == kind]
        first = 0 if sim.config.list_ignores_page else (page - 1) * size
        return json_reply(200, envelope(0, "SUCCEED", [self.view(sim, t, origin) for t in tasks[first:first + size]]))

    def _costs(self, sim: Any, query: Mapping[str, List[str]]) -> Reply:
        """The account's resource packs: the balance in one, and an expired one whose credits are
        left but cannot be spent."""
        if not all(query.get(name, [""])[0].isdigit() for name in ("start_time", "end_time")):
            return refusal(400, 1201, "参数错误：start_time 和 end_time 必填 (毫秒时间戳)")
        now = int(time.time() * 1000)
        day = 86400 * 1000
        live = {"resource_pack_name": "视频生成-资源包", "resource_pack_id": "pack-live", "status": "online",
                "resource_pack_type": "decreasing_total", "total_quantity": sim.config.balance / 100,
                "remaining_quantity": sim.current_balance() / 100, "purchase_time": now - 30 * day,
                "effective_time": now - 30 * day, "invalid_time": now + 335 * day}
        expired = {**live, "resource_pack_id": "pack-old", "status": "expired", "remaining_quantity": 50.0,
                   "total_quantity": 100.0, "effective_time": now - 400 * day, "invalid_time": now - 35 * day}
        return json_reply(200, envelope(0, "SUCCEED", {"code": 0, "msg": "", "resource_pack_subscribe_infos":
                                                       [live, expired]}))

    def view(self, sim: Any, task: Any, origin: str) -> Dict[str, Any]:
        from .server import GENERATION_FAILED_MESSAGE, POLICY_MESSAGE

        status, _, ends_at = sim.timeline(task)
        word = STATUS_WORDS[status]
        created = int(task.created_wall.timestamp() * 1000)
        done = status in ("completed", "failed")
        view: Dict[str, Any] = {
            "task_id": task.task_id, "task_status": sim.config.status_words.get(word, word),
            "task_status_msg": {"policy": POLICY_MESSAGE, "error": GENERATION_FAILED_MESSAGE}.get(task.outcome, "")
            if status == "failed" else "",
            "task_info": {"external_task_id": task.extra["external_task_id"]} if task.extra.get("external_task_id")
            else {},
            "created_at": created, "updated_at": created + int(ends_at * 1000) if done else created,
        }
        if done:  # Kling's own charge, in units (1 unit = ¥1 = 100 fen of the simulator's balance)
            view["final_unit_deduction"] = f"{task.cost / 100:g}"
        if status == "completed":
            view["task_result"] = {"videos": [{"id": f"{task.task_id}-1", "url": sim.signed_url(task.task_id, origin),
                                               "duration": str(task.duration)}]}
        return view

    def settings(self, sim: Any) -> Dict[str, str]:
        return {"PROVIDER": NAME, "KLING_BASE_URL": sim.base_url, "KLING_API_KEY": sim.config.api_key or "kling-any"}

    def job_price(self, sim: Any) -> int:
        return price({"model_name": "kling-v2-5-turbo", "mode": "std", "duration": "5"})

    def error(self, kind: str, message: str, **details: Any) -> Reply:
        if kind in ("server", "server_in_200"):
            return refusal(500 if kind == "server" else 200, 5000, "服务器内部错误")
        if kind == "rate_limited":
            return refusal(429, 1302, "请求过于频繁，请稍后再试")
        if kind == "unauthorised":
            return refusal(401, 1002, f"鉴权失败: {message.split(': ', 1)[-1]}")
        if kind == "in_200":  # any documented (or undocumented) code inside an HTTP 200
            return refusal(200, int(details.get("code") or 1200), message or "参数错误")
        if kind == "bad_request":
            return refusal(400, 1200, message or "参数错误")
        if kind == "insufficient_balance":
            return refusal(429, 1102, message or "资源包已耗尽")
        return refusal(404, 1203, f"接口或资源不存在 ({message})" if kind == "no_route" else message)


PROTOCOL = KlingProtocol()
