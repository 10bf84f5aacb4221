"""asyncy: a test plugin written with `async def` everywhere."""

import asyncio
import os
import time

import plugvisor

MARKERS = os.environ.get("MARKER_DIR", "")


def mark(name: str, text: str = "") -> None:
    if MARKERS:
        with open(os.path.join(MARKERS, name), "w") as f:
            f.write(text)


class Asyncy(plugvisor.Plugin):
    name = "asyncy"
    version = "0.2.0"

    async def initialize(self, config=None):
        await asyncio.sleep(0)
        self.config = dict(config or {})

    async def execute(self, input):
        op = input.get("op") if isinstance(input, dict) else None
        if op == "sleep":
            mark("sleeping", str(os.getpid()))
            try:
                await asyncio.sleep(input["secs"])
            except asyncio.CancelledError:
                mark("async-cancelled", str(os.getpid()))
                raise
            return "slept"
        if op == "hog":
            time.sleep(input["secs"])  # blocks the plugin loop, never the server
            return "hogged"
        if op == "invalid":
            raise plugvisor.InvalidInput("no good")
        return {"async": input}

    async def execute_stream(self, input):
        try:
            for i in range(input.get("n", 3)):
                await asyncio.sleep(input.get("gap", 0))
                yield i
        except asyncio.CancelledError:
            mark("async-stream-cancelled")
            raise
        finally:
            mark("async-stream-closed")

    @plugvisor.method
    async def double(self, input):
        return input * 2

    @plugvisor.route("POST", "/count")
    async def count(self, request):
        size = 0
        async for chunk in request.body:
            size += len(chunk)
        return {"bytes": size}

    @plugvisor.route("GET", "/ticks")
    async def ticks(self, request):
        async def gen():
            for i in range(3):
                await asyncio.sleep(0.01)
                yield f"tick {i}\n"

        return plugvisor.RouteResponse.stream(gen(), "text/plain")

    async def health_check(self):
        return plugvisor.HealthReport("pass", checks={"loop:ok": [{"status": "pass"}]})


if __name__ == "__main__":
    plugvisor.run(Asyncy())
