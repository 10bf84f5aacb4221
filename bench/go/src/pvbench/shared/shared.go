// Package shared: the echo interface, and its go-plugin net/rpc and gRPC plugins, of the bench's go-plugin peer.
package shared

import (
	"context"
	"errors"
	"net/rpc"
	"time"

	wrapperspb "github.com/golang/protobuf/ptypes/wrappers"
	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
)

// Handshake is shared by the host harness and the echo plugin.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "PVBENCH_PLUGIN",
	MagicCookieValue: "echo",
}

// Echo is what the plugin serves.
type Echo interface {
	Echo(in []byte) ([]byte, error)
	Hang() error
	// Stream delivers n chunks of size bytes to each (gRPC only).
	Stream(n uint64, each func([]byte)) error
}

// Impl is the plugin's side: echo back, hang forever, stream 16-byte chunks.
type Impl struct{}

func (Impl) Echo(in []byte) ([]byte, error) { return in, nil }
func (Impl) Hang() error                    { time.Sleep(time.Hour); return nil }
func (Impl) Stream(n uint64, each func([]byte)) error {
	chunk := make([]byte, 16)
	for i := uint64(0); i < n; i++ {
		each(chunk)
	}
	return nil
}

// ---- net/rpc ----

type RPCServer struct{ Impl Echo }

func (s *RPCServer) Echo(in []byte, out *[]byte) error {
	r, err := s.Impl.Echo(in)
	*out = r
	return err
}
func (s *RPCServer) Hang(_ int, _ *int) error { return s.Impl.Hang() }

type RPCClient struct{ c *rpc.Client }

func (c *RPCClient) Echo(in []byte) ([]byte, error) {
	var out []byte
	err := c.c.Call("Plugin.Echo", in, &out)
	return out, err
}
func (c *RPCClient) Hang() error { var r int; return c.c.Call("Plugin.Hang", 0, &r) }
func (c *RPCClient) Stream(uint64, func([]byte)) error {
	return errors.New("net/rpc has no stream")
}

// ---- gRPC (hand-written service description; messages are protobuf wrappers) ----

type echoServer interface {
	Echo(context.Context, *wrapperspb.BytesValue) (*wrapperspb.BytesValue, error)
	Hang(context.Context, *wrapperspb.BytesValue) (*wrapperspb.BytesValue, error)
	Stream(*wrapperspb.UInt64Value, grpc.ServerStream) error
}

type grpcServer struct{ impl Echo }

func (s *grpcServer) Echo(_ context.Context, in *wrapperspb.BytesValue) (*wrapperspb.BytesValue, error) {
	r, err := s.impl.Echo(in.Value)
	return &wrapperspb.BytesValue{Value: r}, err
}
func (s *grpcServer) Hang(context.Context, *wrapperspb.BytesValue) (*wrapperspb.BytesValue, error) {
	return &wrapperspb.BytesValue{}, s.impl.Hang()
}
func (s *grpcServer) Stream(n *wrapperspb.UInt64Value, st grpc.ServerStream) error {
	var err error
	msg := &wrapperspb.BytesValue{}
	s.impl.Stream(n.Value, func(b []byte) {
		if err == nil {
			msg.Value = b
			err = st.SendMsg(msg)
		}
	})
	return err
}

func unary(name string, call func(echoServer, context.Context, *wrapperspb.BytesValue) (*wrapperspb.BytesValue, error)) grpc.MethodDesc {
	return grpc.MethodDesc{MethodName: name, Handler: func(srv interface{}, ctx context.Context, dec func(interface{}) error, _ grpc.UnaryServerInterceptor) (interface{}, error) {
		in := new(wrapperspb.BytesValue)
		if err := dec(in); err != nil {
			return nil, err
		}
		return call(srv.(echoServer), ctx, in)
	}}
}

var serviceDesc = grpc.ServiceDesc{
	ServiceName: "pvbench.Echo",
	HandlerType: (*echoServer)(nil),
	Methods: []grpc.MethodDesc{
		unary("Echo", echoServer.Echo),
		unary("Hang", echoServer.Hang),
	},
	Streams: []grpc.StreamDesc{{StreamName: "Stream", ServerStreams: true,
		Handler: func(srv interface{}, st grpc.ServerStream) error {
			n := new(wrapperspb.UInt64Value)
			if err := st.RecvMsg(n); err != nil {
				return err
			}
			return srv.(echoServer).Stream(n, st)
		}}},
}

type grpcClient struct{ conn *grpc.ClientConn }

func (c *grpcClient) Echo(in []byte) ([]byte, error) {
	out := new(wrapperspb.BytesValue)
	err := c.conn.Invoke(context.Background(), "/pvbench.Echo/Echo", &wrapperspb.BytesValue{Value: in}, out)
	return out.Value, err
}
func (c *grpcClient) Hang() error {
	out := new(wrapperspb.BytesValue)
	return c.conn.Invoke(context.Background(), "/pvbench.Echo/Hang", &wrapperspb.BytesValue{}, out)
}
func (c *grpcClient) Stream(n uint64, each func([]byte)) error {
	st, err := c.conn.NewStream(context.Background(), &serviceDesc.Streams[0], "/pvbench.Echo/Stream")
	if err != nil {
		return err
	}
	if err := st.SendMsg(&wrapperspb.UInt64Value{Value: n}); err != nil {
		return err
	}
	if err := st.CloseSend(); err != nil {
		return err
	}
	for {
		msg := new(wrapperspb.BytesValue)
		if err := st.RecvMsg(msg); err != nil {
			if err.Error() == "EOF" {
				return nil
			}
			return err
		}
		each(msg.Value)
	}
}

// EchoPlugin is the go-plugin Plugin and GRPCPlugin of the echo.
type EchoPlugin struct {
	plugin.Plugin
	Impl Echo
}

func (p *EchoPlugin) Server(*plugin.MuxBroker) (interface{}, error) {
	return &RPCServer{Impl: p.Impl}, nil
}
func (p *EchoPlugin) Client(_ *plugin.MuxBroker, c *rpc.Client) (interface{}, error) {
	return &RPCClient{c: c}, nil
}
func (p *EchoPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	s.RegisterService(&serviceDesc, &grpcServer{impl: p.Impl})
	return nil
}
func (p *EchoPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return &grpcClient{conn: c}, nil
}
