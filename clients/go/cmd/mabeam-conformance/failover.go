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
