// Command echo-plugin: the go-plugin echo plugin of the bench (serves net/rpc and gRPC).
package main

import (
	"os"

	plugin "github.com/hashicorp/go-plugin"
	"pvbench/shared"
)

// go-plugin 1.0.1's server serves gRPC whenever it has a gRPC server, so the harness says
// which protocol it wants in PVBENCH_PROTO.
func main() {
	config := &plugin.ServeConfig{
		HandshakeConfig: shared.Handshake,
		Plugins:         map[string]plugin.Plugin{"echo": &shared.EchoPlugin{Impl: shared.Impl{}}},
	}
	if os.Getenv("PVBENCH_PROTO") != "netrpc" {
		config.GRPCServer = plugin.DefaultGRPCServer
	}
	plugin.Serve(config)
}
