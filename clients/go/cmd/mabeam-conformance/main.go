// Command mabeam-conformance is the Go SDK's conformance runner: it runs the scenarios in
// clients/conformance/scenarios against a live cluster (see clients/conformance/README.md).
//
//	mabeam-conformance run --cluster cluster.json --scenarios DIR --run ID [--only NAME ...]
//	mabeam-conformance serve --cluster cluster.json --node 1 --name relay-go
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	v1 "github.com/mabeam/mabeam/clients/go/gen/mabeamv1"
	"github.com/mabeam/mabeam/clients/go/mabeam"
	"gopkg.in/yaml.v3"
)

const lang = "go"

type node struct {
	NodeID         string `json:"node_id"`
	Meshd          string `json:"meshd"`
	Agentd         string `json:"agentd"`
	Coordinator    string `json:"coordinator"`
	CoordinatorPID int    `json:"coordinator_pid"`
}

type cluster struct {
	Nodes []node `json:"nodes"`
}

type step struct {
	Op         string            `yaml:"op"`
	Args       map[string]any    `yaml:"args"`
	Expect     map[string]any    `yaml:"expect"`
	Error      map[string]any    `yaml:"error"`
	Save       map[string]string `yaml:"save"`
	Eventually float64           `yaml:"eventually"`
	Within     float64           `yaml:"within"`
}

type scenario struct {
	Name  string `yaml:"name"`
	Steps []step `yaml:"steps"`
}

type failure struct{ msg string }

func (f failure) Error() string { return f.msg }

func fail(format string, args ...any) error { return failure{fmt.Sprintf(format, args...)} }

var varRE = regexp.MustCompile(`\$\{([A-Za-z0-9_]+)\}`)

func substitute(v any, vars map[string]any) any {
	switch t := v.(type) {
	case string:
		if m := varRE.FindStringSubmatch(t); m != nil && m[0] == t {
			return vars[m[1]]
		}
		return varRE.ReplaceAllStringFunc(t, func(s string) string { return fmt.Sprint(vars[s[2:len(s)-1]]) })
	case []any:
		out := make([]any, len(t))
		for i, x := range t {
			out[i] = substitute(x, vars)
		}
		return out
	case map[string]any:
		out := map[string]any{}
		for k, x := range t {
			out[k] = substitute(x, vars)
		}
		return out
	}
	return v
}

// normal turns any value into its JSON form (maps of any, float64 numbers) so results compare alike.
func normal(v any) any {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	var out any
	_ = json.Unmarshal(data, &out)
	return out
}

func lookupPath(result any, path string) (any, error) {
	value := result
	for _, part := range strings.Split(path, ".") {
		switch t := value.(type) {
		case []any:
			if part == "#" {
				value = float64(len(t))
				continue
			}
			i, err := strconv.Atoi(part)
			if err != nil || i >= len(t) {
				return nil, fail("result has no %q", path)
			}
			value = t[i]
		case map[string]any:
			x, ok := t[part]
			if !ok {
				return nil, fail("result has no %q: %s", path, show(result))
			}
			value = x
		default:
			return nil, fail("result has no %q: %s", path, show(result))
		}
	}
	return value, nil
}

func show(v any) string {
	data, _ := json.Marshal(v)
	return string(data)
}

func matches(actual, expected any) bool {
	if m, ok := expected.(map[string]any); ok && len(m) == 1 {
		for op, bound := range m {
			a, okA := actual.(float64)
			b, okB := bound.(float64)
			if op == "lt" {
				return okA && okB && a < b
			}
			if op == "gt" {
				return okA && okB && a > b
			}
		}
	}
	switch e := expected.(type) {
	case []any:
		a, ok := actual.([]any)
		if !ok || len(a) != len(e) {
			return false
		}
		for i := range e {
			if !matches(a[i], e[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		a, ok := actual.(map[string]any)
		if !ok || len(a) != len(e) {
			return false
		}
		for k, v := range e {
			if !matches(a[k], v) {
				return false
			}
		}
		return true
	}
	return actual == expected
}

func check(s step, result any, err error) error {
	if s.Error != nil {
		if err == nil {
			return fail("expected %v, got a result: %s", s.Error["code"], show(result))
		}
		var merr *mabeam.Error
		if !errors.As(err, &merr) {
			return fail("expected %v, got %v", s.Error["code"], err)
		}
		if mabeam.CodeName(merr.Code) != s.Error["code"] {
			return fail("expected %v, got %s: %s", s.Error["code"], mabeam.CodeName(merr.Code), merr.Message)
		}
		if r, ok := s.Error["reason"]; ok && merr.Reason != r {
			return fail("expected reason %v, got %q: %s", r, merr.Reason, merr.Message)
		}
		if f, ok := s.Error["field"].(string); ok {
			if _, has := merr.FieldViolations[f]; !has {
				return fail("expected a violation of %q, got %v", f, merr.FieldViolations)
			}
		}
		return nil
	}
	if err != nil {
		return fail("%v", err)
	}
	for path, expected := range s.Expect {
		actual, perr := lookupPath(result, path)
		if perr != nil {
			return perr
		}
		if !matches(actual, normal(expected)) {
			return fail("%s: expected %s, got %s", path, show(expected), show(actual))
		}
	}
	return nil
}

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

type runner struct {
	cluster cluster
	runID   string
	ctx     context.Context
	meshes  map[int]*mabeam.MeshClient
	agentds map[int]*mabeam.AgentClient
	coord   *mabeam.CoordinatorClient
	agents  map[string]*attached
	bids    *mabeam.BidStream
	bidWG   sync.WaitGroup
	bidMu   sync.Mutex
	acked   int
	refused []string
}

type attached struct {
	agent  *mabeam.Agent
	cancel context.CancelFunc
	done   chan struct{}
}

func newRunner(c cluster, runID string) *runner {
	var endpoints []string
	for _, n := range c.Nodes {
		if n.Coordinator != "" {
			endpoints = append(endpoints, n.Coordinator)
		}
	}
	coord, _ := mabeam.DialCoordinator(endpoints)
	coord.FailoverTimeout = 20 * time.Second
	return &runner{cluster: c, runID: runID, ctx: context.Background(), meshes: map[int]*mabeam.MeshClient{},
		agentds: map[int]*mabeam.AgentClient{}, coord: coord, agents: map[string]*attached{}}
}

func intArg(a map[string]any, key string, def int) int {
	switch v := a[key].(type) {
	case int:
		return v
	case float64:
		return int(v)
	}
	return def
}

func floatArg(a map[string]any, key string, def float64) float64 {
	switch v := a[key].(type) {
	case int:
		return float64(v)
	case float64:
		return v
	}
	return def
}

func str(a map[string]any, key string) string {
	if v, ok := a[key]; ok && v != nil {
		return fmt.Sprint(v)
	}
	return ""
}

func (r *runner) node(a map[string]any) node { return r.cluster.Nodes[intArg(a, "node", 1)-1] }

func (r *runner) mesh(a map[string]any) *mabeam.MeshClient {
	i := intArg(a, "node", 1)
	if r.meshes[i] == nil {
		r.meshes[i], _ = mabeam.DialMesh(r.node(a).Meshd)
	}
	return r.meshes[i]
}

func (r *runner) agentd(a map[string]any) *mabeam.AgentClient {
	i := intArg(a, "node", 1)
	if r.agentds[i] == nil {
		r.agentds[i], _ = mabeam.DialAgents(r.node(a).Agentd)
	}
	return r.agentds[i]
}

func (r *runner) close() {
	for _, a := range r.agents {
		a.cancel()
		<-a.done
	}
	for _, m := range r.meshes {
		_ = m.Close()
	}
	for _, a := range r.agentds {
		_ = a.Close()
	}
	if r.bids != nil {
		r.bids.Close()
	}
	_ = r.coord.Close()
}

func withTimeout(ctx context.Context, seconds float64) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, time.Duration(seconds*float64(time.Second)))
}

func (r *runner) op(name string, a map[string]any) (any, error) {
	ctx, cancel := withTimeout(r.ctx, 30)
	defer cancel()
	switch name {
	case "members":
		members, err := r.mesh(a).Members(ctx)
		ids := []string{}
		for _, m := range members {
			ids = append(ids, m.GetNodeId())
		}
		sort.Strings(ids)
		return map[string]any{"count": len(members), "node_ids": ids}, err
	case "leader":
		l, err := r.mesh(a).Leader(ctx, str(a, "role"))
		return map[string]any{"node_id": l.GetNodeId(), "term": l.GetTerm()}, err
	case "register_name", "lookup":
		var entry *v1.NameEntry
		var err error
		if name == "register_name" {
			entry, err = r.mesh(a).RegisterName(ctx, str(a, "name"), str(a, "agent_id"), nil)
		} else {
			entry, err = r.mesh(a).Lookup(ctx, str(a, "name"))
		}
		return map[string]any{"name": entry.GetName(), "node_id": entry.GetTarget().GetNodeId(),
			"agent_id": entry.GetTarget().GetAgentId()}, err
	case "group_members":
		members, err := r.mesh(a).GroupMembers(ctx, str(a, "group"))
		ids := []string{}
		for _, m := range members {
			ids = append(ids, m.GetMember().GetNodeId())
		}
		sort.Strings(ids)
		return map[string]any{"count": len(members), "node_ids": ids}, err
	case "attach_agent":
		return r.attach(a)
	case "detach_agent":
		at := r.agents[str(a, "name")]
		delete(r.agents, str(a, "name"))
		at.cancel()
		<-at.done
		return map[string]any{}, nil
	case "agent_call":
		if t := floatArg(a, "timeout", 0); t > 0 {
			ctx, cancel = withTimeout(r.ctx, t)
			defer cancel()
		} else {
			ctx, cancel = withTimeout(r.ctx, 5)
			defer cancel()
		}
		var reply any
		err := r.agents[str(a, "from")].agent.Call(ctx, str(a, "to"), a["msg"], &reply)
		return map[string]any{"reply": reply}, err
	case "agent_cast":
		return map[string]any{}, r.agents[str(a, "from")].agent.Cast(ctx, str(a, "to"), a["msg"])
	case "agent_cast_group":
		return map[string]any{}, r.agents[str(a, "from")].agent.CastGroup(ctx, str(a, "group"), a["msg"], str(a, "mode") == "one")
	case "mesh_call":
		ctx, cancel = withTimeout(r.ctx, floatArg(a, "timeout", 5))
		defer cancel()
		reply, err := r.mesh(a).Call(ctx, mabeam.ToName(str(a, "to")), []byte{0xc0})
		return map[string]any{"payload_size": len(reply.GetPayload())}, err
	case "spawn":
		info, err := r.agentd(a).Spawn(ctx, str(a, "type"), orEmpty(a["args"]), mabeam.SpawnOptions{Name: str(a, "name")})
		return map[string]any{"name": info.GetName(), "type": info.GetType(), "agent_id": info.GetAgentId()}, err
	case "call":
		ctx, cancel = withTimeout(r.ctx, floatArg(a, "timeout", 5))
		defer cancel()
		var reply any
		err := r.agentd(a).Call(ctx, str(a, "agent"), a["msg"], &reply)
		return map[string]any{"reply": reply}, err
	case "cast":
		return map[string]any{}, r.agentd(a).Cast(ctx, str(a, "agent"), a["msg"])
	case "stop_agent":
		return map[string]any{}, r.agentd(a).Stop(ctx, str(a, "agent"))
	case "create_auction":
		inst, err := r.coord.CreateAuction(ctx, str(a, "kind"), a["config"], mabeam.CreateOptions{})
		return map[string]any{"id": inst.GetId(), "state": inst.GetState()}, err
	case "bid_stream_submit":
		if r.bids == nil {
			r.bids = r.coord.BidStream()
		}
		first, count, base := intArg(a, "first", 1), intArg(a, "count", 1), intArg(a, "amount_base", 0)
		for i := first; i < first+count; i++ {
			event := map[string]any{"type": "bid", "bidder": fmt.Sprintf("bidder-%d", i), "amount": base + i - 1}
			r.bidWG.Add(1)
			go func() {
				defer r.bidWG.Done()
				ctx, cancel := withTimeout(r.ctx, 60)
				defer cancel()
				_, err := r.bids.Submit(ctx, str(a, "auction"), event, "")
				r.bidMu.Lock()
				defer r.bidMu.Unlock()
				if err != nil {
					r.refused = append(r.refused, err.Error())
				} else {
					r.acked++
				}
			}()
		}
		return map[string]any{}, nil
	case "bid_stream_wait":
		r.bidWG.Wait()
		r.bidMu.Lock()
		defer r.bidMu.Unlock()
		out := map[string]any{"acked": r.acked, "refused": len(r.refused), "errors": r.refused}
		r.acked, r.refused = 0, nil
		return out, nil
	case "kill_coordinator_leader":
		leader, err := r.coord.Leader(ctx)
		if err != nil {
			return nil, err
		}
		for _, n := range r.cluster.Nodes {
			if n.NodeID == leader.GetLeaderNodeId() {
				if err := syscall.Kill(n.CoordinatorPID, syscall.SIGKILL); err != nil {
					return nil, fail("kill %d: %v", n.CoordinatorPID, err)
				}
			}
		}
		return map[string]any{"node_id": leader.GetLeaderNodeId()}, nil
	case "close_instance":
		inst, err := r.coord.CloseInstance(ctx, str(a, "id"))
		if err != nil {
			return nil, err
		}
		outcome, _ := mabeam.JSON[any](inst.GetOutcomeJson())
		return map[string]any{"state": inst.GetState(), "outcome": outcome}, nil
	case "create_variable", "set_variable", "get_variable":
		var v *v1.Variable
		var err error
		switch name {
		case "create_variable":
			v, err = r.coord.CreateVariable(ctx, str(a, "name"), a["schema"], a["initial"], 0)
		case "set_variable":
			v, err = r.coord.SetVariable(ctx, str(a, "name"), a["value"], int64(intArg(a, "expected_version", 0)))
		default:
			v, err = r.coord.Variable(ctx, str(a, "name"))
		}
		if err != nil {
			return nil, err
		}
		value, _ := mabeam.JSON[any](v.GetValueJson())
		return map[string]any{"version": v.GetVersion(), "value": value}, nil
	}
	if strings.HasPrefix(name, "run_") {
		return r.runOp(ctx, name, a)
	}
	return nil, fail("unknown op %q", name)
}

// runOp runs the durable-run ops against the node's agentd (RunService).
func (r *runner) runOp(ctx context.Context, name string, a map[string]any) (any, error) {
	runs, err := mabeam.DialRuns(r.node(a).Agentd)
	if err != nil {
		return nil, err
	}
	defer runs.Close()
	switch name {
	case "run_start":
		run, created, err := runs.Start(ctx, str(a, "run_id"), str(a, "agent_type"), a["input"], nil)
		return map[string]any{"created": created, "status": run.GetStatus()}, err
	case "run_append":
		resp, err := runs.Append(ctx, str(a, "run_id"), str(a, "frame_id"), str(a, "type"), a["payload"])
		return map[string]any{"duplicate": resp.GetDuplicate(), "seq": resp.GetSeq()}, err
	case "run_stream":
		follow, _ := a["follow"].(bool)
		var seqs []int64
		lastType := ""
		for event, err := range runs.Stream(ctx, str(a, "run_id"), int64(intArg(a, "cursor", 0)), follow) {
			if err != nil {
				return nil, err
			}
			seqs = append(seqs, event.GetSeq())
			lastType = event.GetType()
		}
		out := map[string]any{"count": len(seqs), "first_seq": 0, "last_seq": 0, "gap_free": true, "last_type": lastType}
		if len(seqs) > 0 {
			out["first_seq"], out["last_seq"] = seqs[0], seqs[len(seqs)-1]
			for i := range seqs {
				if seqs[i] != seqs[0]+int64(i) {
					out["gap_free"] = false
				}
			}
		}
		return out, nil
	case "run_get":
		run, err := runs.Get(ctx, str(a, "run_id"))
		return map[string]any{"status": run.GetStatus(), "last_seq": run.GetLastSeq()}, err
	}
	return nil, fail("unknown op %q", name)
}

func orEmpty(v any) any {
	if v == nil {
		return map[string]any{}
	}
	return v
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

func (r *runner) step(s step, vars map[string]any) error {
	args, _ := substitute(s.Args, vars).(map[string]any)
	if args == nil {
		args = map[string]any{}
	}
	resolved := s
	if s.Expect != nil {
		resolved.Expect = substitute(s.Expect, vars).(map[string]any)
	}
	if s.Error != nil {
		resolved.Error = substitute(s.Error, vars).(map[string]any)
	}
	started := time.Now()
	deadline := started.Add(time.Duration(s.Eventually * float64(time.Second)))
	var result any
	for {
		value, err := r.op(s.Op, args)
		result = normal(value)
		if err != nil {
			var f failure
			if errors.As(err, &f) {
				return f
			}
		}
		cerr := check(resolved, result, err)
		if cerr == nil {
			break
		}
		if time.Now().After(deadline) {
			return cerr
		}
		time.Sleep(100 * time.Millisecond)
	}
	if s.Within > 0 && time.Since(started).Seconds() > s.Within {
		return fail("took %.2fs, more than %gs", time.Since(started).Seconds(), s.Within)
	}
	for name, path := range s.Save {
		v, err := lookupPath(result, path)
		if err != nil {
			return err
		}
		vars[name] = v
	}
	return nil
}

func (r *runner) scenario(sc scenario) error {
	vars := map[string]any{"run": r.runID + "-" + sc.Name, "lang": lang}
	for i, s := range sc.Steps {
		if err := r.step(s, vars); err != nil {
			return fail("step %d (%s): %v", i+1, s.Op, err)
		}
	}
	return nil
}

func readCluster(path string) cluster {
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var c cluster
	if err := json.Unmarshal(data, &c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	return c
}

func run(args []string) int {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	clusterPath := fs.String("cluster", "", "cluster.json")
	dir := fs.String("scenarios", "", "scenario directory")
	runID := fs.String("run", fmt.Sprintf("go%d", os.Getpid()), "run id (name prefix)")
	only := fs.String("only", "", "run only these scenarios (space-separated)")
	timeout := fs.Duration("timeout", 90*time.Second, "per scenario")
	_ = fs.Parse(args)
	wanted := map[string]bool{}
	for _, n := range append(strings.Fields(*only), fs.Args()...) {
		wanted[n] = true
	}
	c := readCluster(*clusterPath)
	paths, _ := filepath.Glob(filepath.Join(*dir, "*.yaml"))
	sort.Strings(paths)
	passed, failed := 0, 0
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		var sc scenario
		if err := yaml.Unmarshal(data, &sc); err != nil {
			fmt.Printf("FAIL %s: bad YAML: %v\n", path, err)
			failed++
			continue
		}
		if len(wanted) > 0 && !wanted[sc.Name] {
			continue
		}
		r := newRunner(c, *runID)
		errs := make(chan error, 1)
		go func() { errs <- r.scenario(sc) }()
		select {
		case err = <-errs:
		case <-time.After(*timeout):
			err = fail("timed out after %s", *timeout)
		}
		r.close()
		if err != nil {
			fmt.Printf("FAIL %s: %v\n", sc.Name, err)
			failed++
		} else {
			fmt.Printf("PASS %s\n", sc.Name)
			passed++
		}
	}
	fmt.Printf("%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		return 1
	}
	return 0
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

func main() {
	if len(os.Args) >= 2 && os.Args[1] == "bench" {
		os.Exit(bench(os.Args[2:]))
	}
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: mabeam-conformance run|serve ...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "run":
		os.Exit(run(os.Args[2:]))
	case "serve":
		os.Exit(serve(os.Args[2:]))
	}
	fmt.Fprintln(os.Stderr, "usage: mabeam-conformance run|serve ...")
	os.Exit(2)
}
