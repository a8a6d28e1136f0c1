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
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
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
	Nodes   []node `json:"nodes"`
	Control string `json:"control"` // the harness's control channel (kill_daemon, restart_daemon)
	// A secure cluster's credentials (the runner itself gets them from the MABEAM_* environment).
	Security struct {
		Token   string `json:"token"`
		TLSCA   string `json:"tls_ca"`
		TLSCert string `json:"tls_cert"`
		TLSKey  string `json:"tls_key"`
	} `json:"security"`
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
	calls   *bidCalls
	watch   *watch
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
	r.agentds[i].Tenant = str(a, "tenant") // a step's tenant (admin tokens only), else the token's
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
	case "bid_calls_start":
		return r.startBidCalls(a)
	case "bid_calls_wait":
		return r.waitBidCalls()
	case "create_auction_with":
		return r.createAuctionWith(ctx, a)
	case "kill_daemon", "restart_daemon", "issue_token":
		return r.control(name, a)
	case "set_tenant_quota":
		q, err := r.mesh(a).SetTenantQuota(ctx, &v1.TenantQuota{Tenant: str(a, "tenant"), MaxAgents: int64(intArg(a, "max_agents", 0)),
			MaxInstances: int64(intArg(a, "max_instances", 0))})
		return map[string]any{"tenant": q.GetTenant(), "max_agents": q.GetMaxAgents(), "max_instances": q.GetMaxInstances()}, err
	case "tenant_usage":
		u, err := r.mesh(a).TenantUsage(ctx, str(a, "tenant"))
		usage := map[string]any{}
		for _, q := range u.GetUsage() {
			usage[q.GetQuota()] = map[string]any{"used": q.GetUsed(), "limit": q.GetLimit(), "exact": q.GetExact()}
		}
		return map[string]any{"tenant": u.GetTenant(), "max_agents": u.GetQuota().GetMaxAgents(),
			"max_instances": u.GetQuota().GetMaxInstances(), "usage": usage}, err
	case "members_with":
		return r.membersWith(ctx, a)
	case "kill_coordinator_leader":
		// The harness kills it (it knows the pid of a daemon restarted since this runner started).
		leader, err := r.coord.Leader(ctx)
		if err != nil {
			return nil, err
		}
		if _, err := r.control("kill_daemon", map[string]any{"node": leader.GetLeaderNodeId(), "kind": "coordinator"}); err != nil {
			return nil, err
		}
		return map[string]any{"node_id": leader.GetLeaderNodeId()}, nil
	case "watch_variable_start":
		return r.startWatch(str(a, "name"))
	case "watch_variable_wait":
		return r.waitWatch(int64(intArg(a, "until_version", 0)))
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
	case "run_wait_event":
		for event, err := range runs.Stream(ctx, str(a, "run_id"), 0, true) {
			if err != nil {
				return nil, err
			}
			if event.GetType() == str(a, "type") {
				payload, err := mabeam.JSON[any](event.GetPayloadJson())
				return map[string]any{"seq": event.GetSeq(), "payload": payload}, err
			}
		}
		return nil, fail("run %s ended without an event of type %q", str(a, "run_id"), str(a, "type"))
	case "run_approve", "run_deny":
		decide := runs.Approve
		if name == "run_deny" {
			decide = runs.Deny
		}
		resp, err := decide(ctx, str(a, "run_id"), str(a, "tool_call_id"), str(a, "note"))
		return map[string]any{"duplicate": resp.GetDuplicate(), "seq": resp.GetSeq()}, err
	}
	return nil, fail("unknown op %q", name)
}

func orEmpty(v any) any {
	if v == nil {
		return map[string]any{}
	}
	return v
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
