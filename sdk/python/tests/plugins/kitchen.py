"""kitchen: a test plugin that uses every part of the SDK with plain (sync) methods."""

import ctypes
import hashlib
import os
import subprocess
import tempfile
import time

import plugvisor
from plugvisor import RouteResponse

MARKERS = os.environ.get("MARKER_DIR", "")


def mark(name: str, text: str = "") -> None:
    """Leaves a file the tests look for (the plugin saw something happen)."""
    if MARKERS:
        with open(os.path.join(MARKERS, name), "w") as f:
            f.write(text)


class Blob:
    """A seed-004 FileBackedDTO: writes itself to a temporary file of its own."""

    media_type = "text/plain"

    def __init__(self, data: bytes) -> None:
        self.data = data

    def to_temp_file(self) -> str:
        fd, path = tempfile.mkstemp(suffix=".txt")
        os.write(fd, self.data)
        os.close(fd)
        return path


class Kitchen(plugvisor.Plugin):
    name = "kitchen"
    version = "1.2.3"
    config_schema = {
        "type": "object",
        "properties": {
            "mode": {"type": "string", "enum": ["plain", "upper"], "default": "plain"},
            "suffix": {"type": "string", "default": ""},
        },
        "additionalProperties": False,
    }

    def execute(self, input):
        if not isinstance(input, dict) or "op" not in input:
            return self.transform(input)
        return getattr(self, "op_" + input["op"])(input)

    def transform(self, value):
        if isinstance(value, str):
            value = value.upper() if self.get_current_config()["mode"] == "upper" else value
            return value + self.get_current_config()["suffix"]
        return value

    def op_invalid(self, input):
        raise plugvisor.InvalidInput("value: must be a number")

    def op_boom(self, input):
        raise ValueError("kaboom")

    def op_block(self, input):
        mark("blocking", str(os.getpid()))
        call = plugvisor.current_call()
        if call.wait(input.get("secs", 30)):
            mark("cancelled", str(os.getpid()))
            call.raise_if_cancelled()
        return "not cancelled"

    def op_busy(self, input):
        time.sleep(input["secs"])
        return "done"

    def op_exit(self, input):
        os._exit(input.get("code", 3))

    def op_sysexit(self, input):
        raise SystemExit(input.get("code", 7))

    def op_segfault(self, input):
        ctypes.string_at(0)

    def op_read(self, input):
        f = input["file"]
        data = f.read_bytes()
        return {
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": f.size,
            "read": len(data),
            "is_ref": isinstance(f, plugvisor.FileRef),
            "media_type": f.media_type,
        }

    def op_write(self, input):
        out = plugvisor.output_file("out.txt", media_type="text/plain")
        out.write(input["text"].encode())
        return {"file": out, "nested": [{"again": out.ref()}]}

    def op_blob(self, input):
        return {"file": Blob(input["text"].encode())}

    def op_print(self, input):
        print("this goes to stderr, not stdout", flush=True)
        return "printed"

    def op_pid(self, input):
        return os.getpid()

    def op_spawn(self, input):
        child = subprocess.Popen(["sleep", "60"])
        return child.pid

    def op_stall_config(self, input):
        self.stall = input["secs"]
        return "stalling"

    def get_current_config(self):
        time.sleep(getattr(self, "stall", 0))
        return super().get_current_config()

    def op_unencodable(self, input):
        return {"x": object()}

    def execute_stream(self, input):
        n = input.get("n", 3) if isinstance(input, dict) else 3
        if n < 0:
            raise plugvisor.InvalidInput("n: must not be negative")
        try:
            for i in range(n):
                if input.get("fail_at") == i:
                    raise plugvisor.PluginFailed(f"failed at item {i}")
                if input.get("slow") and plugvisor.current_call().wait(input["slow"]):
                    mark("stream-cancelled", f"seen by the call at item {i}")
                    return
                yield {"i": i, "pad": input.get("pad", "")}
        except GeneratorExit:
            if input.get("slow"):
                mark("stream-cancelled", "closed at a yield")
            raise

    @plugvisor.method(summary="Upper-cases a string with a bang", input_schema={"type": "string"})
    def shout(self, input):
        if not isinstance(input, str):
            raise plugvisor.InvalidInput("expected a string")
        return input.upper() + "!"

    @plugvisor.method("re-verse")
    def reverse(self, input):
        """Reverses a string."""
        return input[::-1]

    @plugvisor.route("GET", "/hello", summary="A greeting")
    def hello(self, request):
        return {"message": "hello from kitchen", "who": request.query_param("who")}

    @plugvisor.route("POST", "/echo")
    def echo_body(self, request):
        body = request.body.read()
        answer = RouteResponse.bytes(body, request.header("content-type") or "application/octet-stream", 201)
        return answer.header("X-Kitchen", str(len(body)))

    @plugvisor.route("GET", "/items/{id}")
    def item(self, request):
        return {"id": request.params["id"], "forwarded": request.header("x-forwarded-for") is not None}

    @plugvisor.route("GET", "/files/{*rest}")
    def files(self, request):
        return RouteResponse.text(request.params["rest"])

    @plugvisor.route("GET", "/sse")
    def sse(self, request):
        n = int(request.query_param("n") or 3)
        return RouteResponse.sse(f"tick {i}" for i in range(1, n + 1))

    @plugvisor.route("GET", "/fail")
    def fail(self, request):
        raise plugvisor.NotInitialized("configure me first")

    def health_check(self):
        if self.get_current_config()["mode"] == "upper":
            return plugvisor.HealthReport.warn("shouting")
        return "pass"

    def cleanup(self):
        mark("cleanup", str(os.getpid()))


if __name__ == "__main__":
    plugvisor.run(Kitchen())
