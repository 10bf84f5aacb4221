"""The plugin logic P20 measures, shared by both sides: sdk_bench.py (plugvisor SDK) and
cjm_bench.py (cjm-plugin-system), so the two workers do exactly the same work per call."""


def echo(text):
    """The small call: the input text back, in a one-key object."""
    return {"text": text}


def ticks(n):
    """The stream: `n` small items (the integers 0 … n-1)."""
    return iter(range(n))
