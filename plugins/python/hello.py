"""hello: the smallest plugvisor plugin in Python (run by plugins/python/hello.toml)."""
import plugvisor


class Hello(plugvisor.Plugin):
    name = "hello"
    version = "0.1.0"

    def execute(self, input):
        return {"hello": input}


if __name__ == "__main__":
    plugvisor.run(Hello())
