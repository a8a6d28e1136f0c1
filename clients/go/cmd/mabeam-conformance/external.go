// External agents: the relay agent the scenarios attach, the attach step and the serve command.

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/mabeam/mabeam/clients/go/mabeam"
)

// relay is the relay behaviour every SDK implements (scenarios 05 and 08).
type relay struct {
	mu   sync.Mutex
	last map[string]any
}

func (r *relay) onCall(agent *mabeam.Agent) func(ctx context.Context, in *mabeam.Incoming) (any, error) {
	return func(ctx context.Context, in *mabeam.Incoming) (any, error) {
		var msg any
		if err := in.Decode(&msg); err != nil {
			return nil, err
		}
		if msg == "last" {
			r.mu.Lock()
			defer r.mu.Unlock()
			if r.last == nil {
				return map[string]any{"code": "NONE", "elapsed_ms": 0}, nil
			}
			return r.last, nil
		}
		body, _ := msg.(map[string]any)
		hops, _ := body["hops"].([]any)
		trail, _ := body["trail"].([]any)
		trail = append(trail, lang)
		if len(hops) == 0 {
			return map[string]any{"hops": []any{}, "trail": trail}, nil
		}
		to, next := "", any(map[string]any{"hops": hops[1:], "trail": trail})
		if hop, ok := hops[0].(map[string]any); ok {
			to, next = fmt.Sprint(hop["to"]), hop["msg"]
		} else {
			to = fmt.Sprint(hops[0])
		}
		started := time.Now()
		var reply any
		err := agent.Call(ctx, to, next, &reply) // ctx carries the handled call's deadline
		code := "OK"
		var merr *mabeam.Error
		if errors.As(err, &merr) {
			code = mabeam.CodeName(merr.Code)
		}
		r.mu.Lock()
		r.last = map[string]any{"code": code, "elapsed_ms": time.Since(started).Milliseconds()}
		r.mu.Unlock()
		return reply, err
	}
}

func (r *runner) attach(a map[string]any) (any, error) {
	behaviour := str(a, "behaviour")
	var mu sync.Mutex
	seen := []any{}
	release := make(chan struct{})
	agent := &mabeam.Agent{Endpoint: r.node(a).Meshd, Names: []string{str(a, "name")},
		MaxPending: uint32(intArg(a, "max_pending", 0))}
	if groups, ok := a["groups"].([]any); ok {
		for _, g := range groups {
			agent.Groups = append(agent.Groups, fmt.Sprint(g))
		}
	}
	rl := &relay{}
	agent.OnCall = func(ctx context.Context, in *mabeam.Incoming) (any, error) {
		if behaviour == "relay" {
			return rl.onCall(agent)(ctx, in)
		}
		var msg any
		if err := in.Decode(&msg); err != nil {
			return nil, err
		}
		if behaviour == "collect" && msg == "seen" {
			mu.Lock()
			defer mu.Unlock()
			return append([]any{}, seen...), nil
		}
		return msg, nil
	}
	agent.OnCast = func(ctx context.Context, in *mabeam.Incoming) error {
		var msg any
		_ = in.Decode(&msg)
		mu.Lock()
		seen = append(seen, msg)
		mu.Unlock()
		if behaviour == "block" {
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
		return nil
	}
	ctx, cancel := context.WithCancel(r.ctx)
	done := make(chan struct{})
	errs := make(chan error, 1)
	go func() {
		defer close(done)
		errs <- agent.Run(ctx)
	}()
	if err := waitAttached(agent, errs, 15*time.Second); err != nil {
		cancel()
		return nil, err
	}
	r.agents[str(a, "name")] = &attached{agent: agent, cancel: func() { close(release); cancel() }, done: done}
	return map[string]any{"node_id": agent.Ref().GetNodeId()}, nil
}

func waitAttached(agent *mabeam.Agent, errs chan error, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for agent.Ref() == nil {
		select {
		case err := <-errs:
			return err
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fail("not attached within %s", limit)
		}
	}
	return nil
}

func serve(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	clusterPath := fs.String("cluster", "", "cluster.json")
	nodeIndex := fs.Int("node", 1, "node (1-based)")
	name := fs.String("name", "relay-go", "name to register")
	_ = fs.Parse(args)
	c := readCluster(*clusterPath)
	agent := &mabeam.Agent{Endpoint: c.Nodes[*nodeIndex-1].Meshd, Names: []string{*name}}
	rl := &relay{}
	agent.OnCall = rl.onCall(agent)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errs := make(chan error, 1)
	go func() { errs <- agent.Run(ctx) }()
	if err := waitAttached(agent, errs, 30*time.Second); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin) // until the harness closes stdin
	return 0
}
