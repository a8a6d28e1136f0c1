package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/mabeam/mabeam/clients/go/mabeam"
)

// bidCalls are unary SubmitBid calls running in the background (ops bid_calls_start/bid_calls_wait), so
// that a step after the start (a kill -9 of the active coordinator) lands in the middle of them.
type bidCalls struct {
	wg     sync.WaitGroup
	mu     sync.Mutex
	acked  int
	errors []string
}

// startBidCalls submits count bids, concurrency at a time, each with its own idempotency key; it returns
// once ackedBefore calls have been answered.
func (r *runner) startBidCalls(a map[string]any) (any, error) {
	count, concurrency, base := intArg(a, "count", 1), intArg(a, "concurrency", 1), intArg(a, "amount_base", 0)
	auction, enoughAt := str(a, "auction"), intArg(a, "acked_before", 0)
	calls := &bidCalls{}
	r.calls = calls
	next := make(chan int, count)
	for i := 1; i <= count; i++ {
		next <- i
	}
	close(next)
	enough := make(chan struct{})
	var once sync.Once
	for range concurrency {
		calls.wg.Add(1)
		go func() {
			defer calls.wg.Done()
			for i := range next {
				event := map[string]any{"type": "bid", "bidder": fmt.Sprintf("bidder-%d", i), "amount": base + i - 1}
				ctx, cancel := withTimeout(r.ctx, 60)
				_, err := r.coord.SubmitBid(ctx, auction, event, fmt.Sprintf("%s-%d", auction, i))
				cancel()
				calls.mu.Lock()
				if err != nil {
					calls.errors = append(calls.errors, err.Error())
				} else {
					calls.acked++
				}
				if calls.acked+len(calls.errors) >= enoughAt {
					once.Do(func() { close(enough) })
				}
				calls.mu.Unlock()
			}
		}()
	}
	go func() { calls.wg.Wait(); once.Do(func() { close(enough) }) }()
	<-enough
	return map[string]any{}, nil
}

// waitBidCalls waits for every call of the last bid_calls_start: {acked, failed, errors (the first 3)}.
func (r *runner) waitBidCalls() (any, error) {
	calls := r.calls
	if calls == nil {
		return nil, fail("bid_calls_wait before bid_calls_start")
	}
	calls.wg.Wait()
	r.calls = nil
	return map[string]any{"acked": calls.acked, "failed": len(calls.errors), "errors": calls.errors[:min(3, len(calls.errors))]}, nil
}

// membersWith lists members with credentials chosen by the step (options, not the environment): the
// cluster's token (token: true), none (false) or the given string; TLS with the client certificate or not.
func (r *runner) membersWith(ctx context.Context, a map[string]any) (any, error) {
	given := r.cluster.Security
	s := mabeam.Security{}
	switch token := a["token"].(type) {
	case bool:
		if token {
			s.Token = given.Token
		}
	case string:
		s.Token = token
	}
	if tls, _ := a["tls"].(bool); tls {
		s.TLSCA, s.TLSCert, s.TLSKey = given.TLSCA, given.TLSCert, given.TLSKey
	}
	creds, err := s.DialOption()
	if err != nil {
		return nil, err
	}
	mesh, err := mabeam.DialMesh(r.node(a).Meshd, creds)
	if err != nil {
		return nil, err
	}
	defer mesh.Close()
	members, err := mesh.Members(ctx)
	return map[string]any{"count": len(members)}, err
}

// watch is a variable watch consumed in the background (ops watch_variable_start/watch_variable_wait).
type watch struct {
	mu       sync.Mutex
	versions []int64
	values   []any
	errors   []string
	changed  chan struct{} // receives (without blocking) after each item or error
	cancel   context.CancelFunc
}

func (w *watch) note() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// startWatch watches a variable from its current version; it returns once that one arrived.
func (r *runner) startWatch(name string) (any, error) {
	ctx, cancel := context.WithCancel(r.ctx)
	w := &watch{changed: make(chan struct{}, 1), cancel: cancel}
	r.watch = w
	go func() {
		for v, err := range r.coord.WatchVariable(ctx, name, 0) {
			w.mu.Lock()
			if err != nil {
				if ctx.Err() == nil {
					w.errors = append(w.errors, err.Error())
				}
			} else {
				value, _ := mabeam.JSON[any](v.GetValueJson())
				w.versions, w.values = append(w.versions, v.GetVersion()), append(w.values, value)
			}
			w.mu.Unlock()
			w.note()
		}
	}()
	select {
	case <-w.changed:
		w.note() // leave the signal for the waiter too
		return map[string]any{}, nil
	case <-time.After(30 * time.Second):
		return nil, fail("the watch delivered nothing in 30 s")
	}
}

// waitWatch waits until the watch delivered untilVersion (or failed, or 30 s passed), then stops it.
func (r *runner) waitWatch(untilVersion int64) (any, error) {
	w := r.watch
	if w == nil {
		return nil, fail("watch_variable_wait before watch_variable_start")
	}
	deadline := time.After(30 * time.Second)
	for {
		w.mu.Lock()
		done := len(w.errors) > 0 || (len(w.versions) > 0 && w.versions[len(w.versions)-1] >= untilVersion)
		w.mu.Unlock()
		if done {
			break
		}
		select {
		case <-w.changed:
		case <-deadline:
			done = true
		}
		if done {
			break
		}
	}
	w.cancel()
	r.watch = nil
	w.mu.Lock()
	defer w.mu.Unlock()
	first := ""
	if len(w.errors) > 0 {
		first = w.errors[0]
	}
	return map[string]any{"versions": w.versions, "values": w.values, "errors": len(w.errors), "error": first}, nil
}

// createAuctionWith creates an auction through a coordinator client built with the step's token (and
// the cluster's TLS files), not the environment's credentials.
func (r *runner) createAuctionWith(ctx context.Context, a map[string]any) (any, error) {
	given := r.cluster.Security
	creds, err := mabeam.Security{Token: str(a, "token"), TLSCA: given.TLSCA, TLSCert: given.TLSCert, TLSKey: given.TLSKey}.DialOption()
	if err != nil {
		return nil, err
	}
	var endpoints []string
	for _, n := range r.cluster.Nodes {
		endpoints = append(endpoints, n.Coordinator)
	}
	coord, err := mabeam.DialCoordinator(endpoints, creds)
	if err != nil {
		return nil, err
	}
	defer coord.Close()
	inst, err := coord.CreateAuction(ctx, str(a, "kind"), a["config"], mabeam.CreateOptions{})
	return map[string]any{"id": inst.GetId(), "state": inst.GetState()}, err
}

// control asks the harness to kill or restart a daemon (one JSON line each way; harness.Control).
func (r *runner) control(op string, args map[string]any) (any, error) {
	conn, err := net.DialTimeout("tcp", r.cluster.Control, 10*time.Second)
	if err != nil {
		return nil, fail("the harness's control channel: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(120 * time.Second)) // a restart waits for the daemon's ready line
	request, _ := json.Marshal(map[string]any{"op": op, "args": args})
	if _, err := conn.Write(append(request, '\n')); err != nil {
		return nil, fail("%s: %v", op, err)
	}
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		return nil, fail("%s: %v", op, err)
	}
	var answer struct {
		OK     bool           `json:"ok"`
		Result map[string]any `json:"result"`
		Error  string         `json:"error"`
	}
	if err := json.Unmarshal(line, &answer); err != nil || !answer.OK {
		return nil, fail("%s: %s %v", op, answer.Error, err)
	}
	return answer.Result, nil
}
