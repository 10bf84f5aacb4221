"""pyguard: a test middleware plugin (before_request and after_response hooks)."""

import plugvisor


class PyGuard(plugvisor.Plugin):
    name = "pyguard"
    version = "0.1.0"

    def execute(self, input):
        return input

    def before_request(self, request):
        if request.header("X-Key") != "k1":
            return plugvisor.Respond(401, {"error": "pyguard: no key"})
        headers = dict(request.headers)
        headers["x-chain"] = "pyguard"
        return plugvisor.Continue(headers=headers)

    def after_response(self, request, response):
        response.set_header("x-guarded-by", "pyguard")
        return response


if __name__ == "__main__":
    plugvisor.run(PyGuard())
