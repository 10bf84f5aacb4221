"""svc: a test plugin for host services (`plugvisor.host()`) and host events (`on_event`).

Several manifests run it; its name is $SVC_NAME. `execute` takes {"op": ...}:

| op | what it does |
|---|---|
| `echo` | answers {"served_by", "value", "pid", "context", "trace_id"} |
| `call` | `host().call(service, input, method=, timeout_ms=)` → {"output"} or {"inner_error"}; logs `svc calls <service>` at info level first |
| `raise_call` | the same, but an error escapes (the worker answers it) |
| `thread_call` | `call` from a thread started with `contextvars.copy_context()` |
| `stream` | collects `host().stream(service, input)` → {"items"} (+ "inner_error") |
| `service` | `host().service(service)` → {"service", "provider", "required"} or {"inner_error"} |
| `no_host` | what `plugvisor.host()` raises without the environment |
| `env` | whether the host token is still in `os.environ` and a child process's environment |
| `crash` | `os._exit(7)` mid-call |
| `sleep` | sleeps `secs` |
| `raise_crashed` | raises a `WorkerCrashed` of its own making |
| `pid` | its pid |

Named methods: `acall` / `astream` / `aservice` (async, through `asyncio.create_task`),
`heard` (the events it heard). `execute_stream`: {"op": "items", "n", "crash_at"?,
"fail_at"?, "crashed_at"?} yields its own items; {"op": "relay", "service", "input"} yields a
service's stream. Events: $SVC_EVENTS (comma-separated names) declares them; $SVC_EVENT_MODE
`raise` makes `on_event` raise (after noting the event); $SVC_ASYNC_EVENTS=1 makes it async.
"""

import asyncio
import contextvars
import logging
import os
import subprocess
import sys
import threading
import time

import plugvisor

NAME = os.environ.get("SVC_NAME", "svc")


def wire(e: plugvisor.PluginError) -> dict:
    out = {"kind": e.kind, "message": e.message, "type": type(e).__name__}
    if isinstance(e, plugvisor.WorkerCrashed) and e.crash is not None:
        out["crash"] = e.crash.to_wire()
    return out


class Svc(plugvisor.Plugin):
    name = NAME
    version = "0.1.0"
    events = [e for e in os.environ.get("SVC_EVENTS", "").split(",") if e]

    def __init__(self) -> None:
        self.heard_events = []
        self.lock = threading.Lock()

    def execute(self, input):
        op = input.get("op") if isinstance(input, dict) else None
        if op == "echo":
            return {
                "served_by": NAME,
                "value": input.get("value"),
                "pid": os.getpid(),
                "context": plugvisor.current_call().context,
                "trace_id": plugvisor.current_call().trace_id,
            }
        if op == "call":
            try:
                return {"output": self._call(input)}
            except plugvisor.PluginError as e:
                return {"inner_error": wire(e)}
        if op == "raise_call":
            return {"output": self._call(input)}
        if op == "thread_call":
            box = {}

            def work():
                try:
                    box["output"] = self._call(input)
                except plugvisor.PluginError as e:
                    box["inner_error"] = wire(e)

            t = threading.Thread(target=contextvars.copy_context().run, args=(work,))
            t.start()
            t.join()
            return box
        if op == "stream":
            items = []
            try:
                with plugvisor.host().stream(input["service"], input.get("input")) as stream:
                    for item in stream:
                        items.append(item)
            except plugvisor.PluginError as e:
                return {"items": items, "inner_error": wire(e)}
            return {"items": items}
        if op == "service":
            try:
                info = plugvisor.host().service(input["service"])
            except plugvisor.PluginError as e:
                return {"inner_error": wire(e)}
            return {"service": info.service, "provider": info.provider, "required": info.required}
        if op == "no_host":
            try:
                plugvisor.host()
            except plugvisor.PluginError as e:
                return {"inner_error": wire(e)}
            return {"host": True}
        if op == "env":
            child = subprocess.run(
                [sys.executable, "-c", "import os; print('PLUGVISOR_HOST_TOKEN' in os.environ)"],
                capture_output=True,
                text=True,
            )
            return {
                "token_in_environ": "PLUGVISOR_HOST_TOKEN" in os.environ,
                "child_sees_token": child.stdout.strip() == "True",
                "addr": os.environ.get("PLUGVISOR_HOST_ADDR"),
            }
        if op == "crash":
            os._exit(7)
        if op == "sleep":
            time.sleep(input.get("secs", 1))
            return "slept"
        if op == "raise_crashed":
            crash = plugvisor.CrashReport("other", 4242, {"code": 3}, "exit", ["bye"])
            raise plugvisor.WorkerCrashed("worker other (pid 4242) exited with code 3", crash=crash)
        if op == "pid":
            return os.getpid()
        return {"served_by": NAME, "input": input}

    def _call(self, input):
        logging.getLogger("svc").info("svc calls %s", input["service"])
        return plugvisor.host().call(
            input["service"],
            input.get("input"),
            method=input.get("method"),
            timeout_ms=input.get("timeout_ms"),
        )

    def execute_stream(self, input):
        op = input.get("op") if isinstance(input, dict) else None
        if op == "relay":
            # A plain generator runs on a plugin thread: the call context goes with it.
            for item in plugvisor.host().stream(input["service"], input.get("input")):
                yield item
            return
        for i in range(input.get("n", 3)):
            if i == input.get("crash_at"):
                time.sleep(0.5)  # the items before it reach the caller first
                os._exit(9)
            if i == input.get("fail_at"):
                raise plugvisor.InvalidInput(f"failed at item {i}")
            if i == input.get("crashed_at"):
                crash = plugvisor.CrashReport("other", 4242, {"code": 3}, "exit", [])
                raise plugvisor.WorkerCrashed("worker other (pid 4242) exited with code 3", crash=crash)
            yield {"i": i, "from": NAME}

    @plugvisor.method("acall")
    async def acall(self, input):
        async def inner():
            return await plugvisor.host().acall(
                input["service"],
                input.get("input"),
                method=input.get("method"),
                timeout_ms=input.get("timeout_ms"),
            )

        try:
            # A task of its own: the call context follows it (contextvars).
            return {"output": await asyncio.create_task(inner())}
        except plugvisor.PluginError as e:
            if input.get("raise"):
                raise
            return {"inner_error": wire(e)}

    @plugvisor.method("astream")
    async def astream(self, input):
        items = []
        try:
            async for item in plugvisor.host().astream(input["service"], input.get("input")):
                items.append(item)
        except plugvisor.PluginError as e:
            return {"items": items, "inner_error": wire(e)}
        return {"items": items}

    @plugvisor.method("aservice")
    async def aservice(self, input):
        try:
            info = await plugvisor.host().aservice(input["service"])
        except plugvisor.PluginError as e:
            return {"inner_error": wire(e)}
        return {"service": info.service, "provider": info.provider, "required": info.required}

    @plugvisor.method("shout")
    def shout(self, input):
        return str(input).upper() + "!"

    @plugvisor.method("heard")
    def heard(self, input):
        with self.lock:
            events = [e.to_wire() for e in reversed(self.heard_events)]
        counts = {}
        for e in events:
            counts[e["event"]] = counts.get(e["event"], 0) + 1
        return {"events": events, "counts": counts}

    def on_event(self, event):
        self._note(event)

    def _note(self, event):
        assert isinstance(event, plugvisor.Event)
        with self.lock:
            self.heard_events.append(event)
        if os.environ.get("SVC_EVENT_MODE") == "raise":
            raise ValueError(f"{NAME} will not hear of {event.event}")


class AsyncSvc(Svc):
    async def on_event(self, event):
        await asyncio.sleep(0)
        self._note(event)


if __name__ == "__main__":
    plugvisor.run(AsyncSvc() if os.environ.get("SVC_ASYNC_EVENTS") == "1" else Svc())
