package mabeam

import (
	"context"
	"encoding/json"
	"time"

	v1 "github.com/mabeam/mabeam/clients/go/gen/mabeamv1"
	"google.golang.org/grpc"
)

// AgentClient talks to one agentd: spawn, stop and inspect agents, and message them (JSON values).
type AgentClient struct {
	conn *grpc.ClientConn
	stub v1.AgentServiceClient
	// Tenant of every request; empty means the token's (another tenant's agents: admin tokens only).
	Tenant string
}

// DialAgents connects to an agentd at host:port.
func DialAgents(target string, opts ...grpc.DialOption) (*AgentClient, error) {
	conn, err := dial(target, opts)
	if err != nil {
		return nil, err
	}
	return &AgentClient{conn: conn, stub: v1.NewAgentServiceClient(conn)}, nil
}

// Close closes the connection.
func (a *AgentClient) Close() error { return a.conn.Close() }

// Stub is the generated client.
func (a *AgentClient) Stub() v1.AgentServiceClient { return a.stub }

// SpawnOptions are the optional fields of a spawn.
type SpawnOptions struct {
	Name, Supervisor, Isolation, Restart, ChildID string
}

// Spawn starts an agent of an allow-listed type with JSON-encodable args.
func (a *AgentClient) Spawn(ctx context.Context, agentType string, args any, opts SpawnOptions) (*v1.AgentInfo, error) {
	argsJSON, err := marshalJSON(args)
	if err != nil {
		return nil, err
	}
	r, err := a.stub.SpawnAgent(ctx, &v1.SpawnAgentRequest{Tenant: a.Tenant, Type: agentType, ArgsJson: argsJSON, Name: opts.Name,
		Supervisor: opts.Supervisor, Isolation: opts.Isolation, Restart: opts.Restart, ChildId: opts.ChildID})
	return r.GetAgent(), Translate(err)
}

// Stop stops an agent (id or name) for good.
func (a *AgentClient) Stop(ctx context.Context, agent string) error {
	_, err := a.stub.StopAgent(ctx, &v1.StopAgentRequest{Tenant: a.Tenant, Agent: agent})
	return Translate(err)
}

// Get returns one agent's state.
func (a *AgentClient) Get(ctx context.Context, agent string) (*v1.AgentInfo, error) {
	r, err := retrying(ctx, func(ctx context.Context) (*v1.GetAgentResponse, error) {
		return a.stub.GetAgent(ctx, &v1.GetAgentRequest{Tenant: a.Tenant, Agent: agent})
	})
	return r.GetAgent(), err
}

// List returns every agent, optionally of one type.
func (a *AgentClient) List(ctx context.Context, agentType string) ([]*v1.AgentInfo, error) {
	r, err := retrying(ctx, func(ctx context.Context) (*v1.ListAgentsResponse, error) {
		return a.stub.ListAgents(ctx, &v1.ListAgentsRequest{Tenant: a.Tenant, Type: agentType})
	})
	return r.GetAgents(), err
}

// Tree returns the supervision trees (or the subtree under root).
func (a *AgentClient) Tree(ctx context.Context, root string) ([]*v1.TreeNode, error) {
	r, err := retrying(ctx, func(ctx context.Context) (*v1.SupervisionTreeResponse, error) {
		return a.stub.SupervisionTree(ctx, &v1.SupervisionTreeRequest{Tenant: a.Tenant, Root: root})
	})
	return r.GetRoots(), err
}

// Cast puts a JSON-encodable message in an agent's mailbox (ErrResourceExhausted when full).
func (a *AgentClient) Cast(ctx context.Context, agent string, msg any) error {
	msgJSON, err := marshalJSON(msg)
	if err != nil {
		return err
	}
	_, err = a.stub.Cast(ctx, &v1.AgentCastRequest{Tenant: a.Tenant, Agent: agent, MessageJson: msgJSON})
	return Translate(err)
}

// Call calls an agent and decodes its JSON reply into reply (a pointer; nil discards it). ctx's
// deadline is the call's deadline (agentd's default, 5 s, when ctx has none).
func (a *AgentClient) Call(ctx context.Context, agent string, msg any, reply any) error {
	msgJSON, err := marshalJSON(msg)
	if err != nil {
		return err
	}
	timeout := 0.0
	if deadline, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(deadline).Seconds(), 0.001)
	}
	r, err := a.stub.Call(ctx, &v1.AgentCallRequest{Tenant: a.Tenant, Agent: agent, MessageJson: msgJSON, TimeoutSeconds: timeout})
	if err != nil {
		return Translate(err)
	}
	if reply == nil {
		return nil
	}
	return unmarshalJSON(r.GetReplyJson(), reply)
}

// CastGroup casts to a process group ("all" members or "one" in turn); the local deliveries.
func (a *AgentClient) CastGroup(ctx context.Context, group string, msg any, mode string) (int32, error) {
	msgJSON, err := marshalJSON(msg)
	if err != nil {
		return 0, err
	}
	r, err := a.stub.CastGroup(ctx, &v1.AgentCastGroupRequest{Tenant: a.Tenant, Group: group, MessageJson: msgJSON, Mode: mode})
	return r.GetLocalDeliveries(), Translate(err)
}

// GroupMembers lists this agentd's members of a group.
func (a *AgentClient) GroupMembers(ctx context.Context, group string) ([]string, error) {
	r, err := retrying(ctx, func(ctx context.Context) (*v1.AgentGroupMembersResponse, error) {
		return a.stub.GroupMembers(ctx, &v1.AgentGroupMembersRequest{Tenant: a.Tenant, Group: group})
	})
	return r.GetAgentIds(), err
}

func marshalJSON(value any) (string, error) {
	if s, ok := value.(json.RawMessage); ok {
		return string(s), nil
	}
	data, err := json.Marshal(value)
	if err != nil {
		return "", &Error{Code: 3, Message: "cannot encode as JSON: " + err.Error()}
	}
	return string(data), nil
}

func unmarshalJSON(text string, into any) error {
	if text == "" {
		text = "null"
	}
	if err := json.Unmarshal([]byte(text), into); err != nil {
		return &Error{Code: 13, Message: "cannot decode the JSON reply: " + err.Error()}
	}
	return nil
}
