// The bench command: call latency and throughput from Go to one agent (a bench sdks runner).

package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mabeam/mabeam/clients/go/mabeam"
)

// bench measures sequential call round trips (p50) and the rate of --calls calls with --concurrency
// in flight, to --target through agentd (AgentService.Call) or, with --external, from an external
// agent through meshd's data plane; prints one JSON line (python -m bench sdks).
func bench(args []string) int {
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	agentd := fs.String("agentd", "", "agentd host:port")
	meshd := fs.String("meshd", "", "meshd host:port (--external)")
	target := fs.String("target", "", "agent name")
	calls := fs.Int("calls", 1000, "calls per measure")
	concurrency := fs.Int("concurrency", 16, "calls in flight for the rate")
	external := fs.Bool("external", false, "call from an external agent over the mesh")
	_ = fs.Parse(args)
	ctx := context.Background()
	var call func() error
	if *external {
		agent := &mabeam.Agent{Endpoint: *meshd, Names: []string{fmt.Sprintf("bench-go-%d", os.Getpid())}}
		runCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		if err := agent.Start(runCtx, 20*time.Second); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		call = func() error {
			c, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			return agent.Call(c, *target, "ping", nil)
		}
	} else {
		client, err := mabeam.DialAgents(*agentd)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer client.Close()
		call = func() error {
			c, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			return client.Call(c, *target, "ping", nil)
		}
	}
	for i := 0; i < 50; i++ { // warm up: connections, caches
		if err := call(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	latencies := make([]time.Duration, 0, *calls)
	for i := 0; i < *calls; i++ {
		start := time.Now()
		if err := call(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		latencies = append(latencies, time.Since(start))
	}
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < *concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(*calls) {
				if call() != nil {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	rate := float64(*calls) / time.Since(start).Seconds()
	out, _ := json.Marshal(map[string]any{"p50_us": latencies[len(latencies)/2].Microseconds(),
		"calls_per_s": rate, "failed": failed.Load()})
	fmt.Println(string(out))
	return 0
}
