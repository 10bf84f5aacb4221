"""P20's plugvisor side: bench_logic's echo and ticks as a plugvisor SDK worker (started by the
Rust host; `import plugvisor` comes from sdk/python/src through PYTHONPATH, set by the bench)."""

import bench_logic
import plugvisor


class Bench(plugvisor.Plugin):
    name = "pybench"
    version = "0.1.0"

    def execute(self, input):
        return bench_logic.echo(input["text"])

    def execute_stream(self, input):
        yield from bench_logic.ticks(input["n"])


if __name__ == "__main__":
    plugvisor.run(Bench())
