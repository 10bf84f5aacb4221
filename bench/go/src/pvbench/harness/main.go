// Command harness: the go-plugin host side of the bench; measures P1, P2, P3, P7, P8 and a 1 MiB call, prints JSON.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io/ioutil"
	"os"
	"os/exec"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"pvbench/shared"
)

type opts struct {
	pluginPath, proto              string
	trials, calls, callers, spawns int
	bigCalls, bigBytes             int
	seconds                        float64
	chunks                         uint64
}

func main() {
	var o opts
	flag.StringVar(&o.pluginPath, "plugin", "", "the echo plugin binary")
	flag.StringVar(&o.proto, "proto", "grpc", "netrpc or grpc")
	flag.IntVar(&o.trials, "trials", 3, "trials of each repeated measurement")
	flag.IntVar(&o.calls, "calls", 3000, "sequential calls per trial (P1)")
	flag.IntVar(&o.callers, "callers", 8, "concurrent callers (P2)")
	flag.Float64Var(&o.seconds, "seconds", 1, "seconds of one P2 trial")
	flag.Uint64Var(&o.chunks, "chunks", 100000, "chunks of one stream (P3)")
	flag.IntVar(&o.spawns, "spawns", 15, "spawns and kills measured (P7, P8)")
	flag.IntVar(&o.bigCalls, "big-calls", 50, "calls with a big input per trial")
	flag.IntVar(&o.bigBytes, "big-bytes", 1<<20, "bytes of the big input")
	flag.Parse()
	out, err := measure(&o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "harness:", err)
		os.Exit(1)
	}
	json.NewEncoder(os.Stdout).Encode(out)
}

func measure(o *opts) (map[string]interface{}, error) {
	out := map[string]interface{}{"proto": o.proto}
	client, echo, _, _, err := start(o)
	if err != nil {
		return nil, err
	}
	defer client.Kill()
	small := bytes.Repeat([]byte("x"), 32)
	p50, p99, err := sequential(o, echo, small, o.calls)
	if err != nil {
		return nil, err
	}
	out["p1_p50_us"], out["p1_p99_us"] = p50, p99
	if out["p2_calls_per_s"], err = concurrent(o, echo, small); err != nil {
		return nil, err
	}
	out["p3_chunks_per_s"] = nil
	if o.proto == "grpc" {
		if out["p3_chunks_per_s"], err = stream(o, echo); err != nil {
			return nil, err
		}
	}
	big := bytes.Repeat([]byte("y"), o.bigBytes)
	if out["mib_p50_us"], _, err = sequential(o, echo, big, o.bigCalls); err != nil {
		return nil, err
	}
	if out["p7_p50_ms"], err = spawns(o); err != nil {
		return nil, err
	}
	if out["p8_p50_ms"], err = kills(o); err != nil {
		return nil, err
	}
	return out, nil
}

// start spawns the plugin and returns it with its echo, the time to the first answer, and its pid.
func start(o *opts) (*plugin.Client, shared.Echo, time.Duration, int, error) {
	begin := time.Now()
	cmd := exec.Command(o.pluginPath)
	cmd.Env = append(os.Environ(), "PVBENCH_PROTO="+o.proto)
	protocol := plugin.ProtocolNetRPC
	if o.proto == "grpc" {
		protocol = plugin.ProtocolGRPC
	}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  shared.Handshake,
		Plugins:          map[string]plugin.Plugin{"echo": &shared.EchoPlugin{}},
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{protocol},
		Logger:           hclog.New(&hclog.LoggerOptions{Output: ioutil.Discard}),
	})
	rpc, err := client.Client()
	if err == nil {
		var raw interface{}
		if raw, err = rpc.Dispense("echo"); err == nil {
			echo := raw.(shared.Echo)
			if _, err = echo.Echo([]byte("first")); err == nil {
				return client, echo, time.Since(begin), cmd.Process.Pid, nil
			}
		}
	}
	client.Kill()
	return nil, nil, 0, 0, err
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
func ms(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

func quantile(v []float64, q float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[int(q*float64(len(s)-1)+0.5)]
}

// sequential: per trial the p50 and p99 of n calls with input in; medians over trials.
func sequential(o *opts, echo shared.Echo, in []byte, n int) (float64, float64, error) {
	var p50s, p99s []float64
	for t := 0; t < o.trials; t++ {
		lat := make([]float64, 0, n)
		for i := 0; i < n; i++ {
			begin := time.Now()
			got, err := echo.Echo(in)
			if err != nil || len(got) != len(in) {
				return 0, 0, fmt.Errorf("echo answered %d bytes, %v", len(got), err)
			}
			lat = append(lat, us(time.Since(begin)))
		}
		p50s, p99s = append(p50s, quantile(lat, 0.5)), append(p99s, quantile(lat, 0.99))
	}
	return quantile(p50s, 0.5), quantile(p99s, 0.5), nil
}

// concurrent: calls/s of o.callers goroutines sharing one client for o.seconds; median over trials.
func concurrent(o *opts, echo shared.Echo, in []byte) (float64, error) {
	var rates []float64
	for t := 0; t < o.trials; t++ {
		var done int64
		var failed atomic.Value
		var wg sync.WaitGroup
		deadline := time.Now().Add(time.Duration(o.seconds * float64(time.Second)))
		begin := time.Now()
		for c := 0; c < o.callers; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(deadline) {
					if _, err := echo.Echo(in); err != nil {
						failed.Store(err)
						return
					}
					atomic.AddInt64(&done, 1)
				}
			}()
		}
		wg.Wait()
		if err, _ := failed.Load().(error); err != nil {
			return 0, err
		}
		rates = append(rates, float64(done)/time.Since(begin).Seconds())
	}
	return quantile(rates, 0.5), nil
}

// stream: chunks/s of one server stream of o.chunks 16-byte chunks; median over trials.
func stream(o *opts, echo shared.Echo) (float64, error) {
	var rates []float64
	for t := 0; t < o.trials; t++ {
		var got uint64
		begin := time.Now()
		if err := echo.Stream(o.chunks, func([]byte) { got++ }); err != nil {
			return 0, err
		}
		if got != o.chunks {
			return 0, fmt.Errorf("stream delivered %d of %d chunks", got, o.chunks)
		}
		rates = append(rates, float64(got)/time.Since(begin).Seconds())
	}
	return quantile(rates, 0.5), nil
}

// spawns: p50 of spawn -> handshake -> dispense -> first echo answered.
func spawns(o *opts) (float64, error) {
	var v []float64
	for i := 0; i < o.spawns; i++ {
		client, _, took, _, err := start(o)
		if err != nil {
			return 0, err
		}
		client.Kill()
		v = append(v, ms(took))
	}
	return quantile(v, 0.5), nil
}

// kills: p50 of SIGKILL of the plugin process during a hanging call -> the caller holds an error.
func kills(o *opts) (float64, error) {
	var v []float64
	for i := 0; i < o.spawns; i++ {
		client, echo, _, pid, err := start(o)
		if err != nil {
			return 0, err
		}
		returned := make(chan time.Time, 1)
		var callErr error
		go func() { callErr = echo.Hang(); returned <- time.Now() }()
		time.Sleep(20 * time.Millisecond) // the call reaches the plugin (no in-flight probe here)
		begin := time.Now()
		syscall.Kill(pid, syscall.SIGKILL)
		end := <-returned
		client.Kill()
		if callErr == nil {
			return 0, fmt.Errorf("the hanging call returned no error after SIGKILL")
		}
		v = append(v, ms(end.Sub(begin)))
	}
	return quantile(v, 0.5), nil
}
