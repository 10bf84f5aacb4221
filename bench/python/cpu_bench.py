"""P21's plugin: pure-Python CPU work per call (a sum of squares), so one worker uses one core
at most whatever its threads (the GIL) and only more workers (`replicas`) use more."""

import plugvisor


class Cpu(plugvisor.Plugin):
    name = "pycpu"
    version = "0.1.0"

    def execute(self, input):
        total = 0
        for i in range(int(input["n"])):
            total += i * i
        return {"sum": total}


if __name__ == "__main__":
    plugvisor.run(Cpu())
