package mabeam

import (
	"context"
	"errors"
	"io"
	"iter"
	"time"

	v1 "github.com/mabeam/mabeam/clients/go/gen/mabeamv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// dial opens a client connection; without options it uses DefaultSecurity (the MABEAM_TOKEN and
// MABEAM_TLS_* environment; plaintext without them: loopback dev clusters).
func dial(target string, opts []grpc.DialOption) (*grpc.ClientConn, error) {
	if len(opts) == 0 {
		var err error
		if opts, err = securityOptions(); err != nil {
			return nil, err
		}
	}
	conn, err := grpc.NewClient(target, opts...)
	return conn, Translate(err)
}

// retrying runs a call that is safe to repeat (a read, or an idempotent write) and repeats it
// while the server answers UNAVAILABLE, honouring RetryInfo, until ctx ends or 4 attempts failed.
func retrying[T any](ctx context.Context, call func(context.Context) (T, error)) (T, error) {
	delay := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		value, err := call(ctx)
		if err == nil {
			return value, nil
		}
		merr := Translate(err).(*Error)
		if merr.Code != codes.Unavailable || attempt >= 4 {
			return value, merr
		}
		wait := delay
		if merr.RetryAfter > 0 {
			wait = merr.RetryAfter
		}
		select {
		case <-ctx.Done():
			return value, merr
		case <-time.After(wait):
		}
		delay *= 2
	}
}

// stream adapts a server stream to a Go iterator of (item, error); the error ends the sequence.
func stream[T any](ctx context.Context, open func(context.Context) (interface{ Recv() (T, error) }, error)) iter.Seq2[T, error] {
	return func(yield func(T, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var zero T
		s, err := open(ctx)
		if err != nil {
			yield(zero, Translate(err))
			return
		}
		for {
			item, err := s.Recv()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					yield(zero, Translate(err))
				}
				return
			}
			if !yield(item, nil) {
				return
			}
		}
	}
}

// Destination is where a data-plane message goes: a registered name, an endpoint or a group.
type Destination struct {
	Name  string
	Agent *v1.AgentRef
	Group *v1.GroupAddress
}

// ToName is a registered name as a destination.
func ToName(name string) Destination { return Destination{Name: name} }

// ToAgent is an endpoint (tenant, node, agent id) as a destination.
func ToAgent(ref *v1.AgentRef) Destination { return Destination{Agent: ref} }

// ToGroup is a group: every member (one=false) or one member in round-robin turn (one=true).
func ToGroup(group string, one bool) Destination {
	mode := v1.GroupMode_GROUP_MODE_ALL
	if one {
		mode = v1.GroupMode_GROUP_MODE_ONE
	}
	return Destination{Group: &v1.GroupAddress{Group: group, Mode: mode}}
}

// MeshClient talks to one meshd: membership, leaders, the registry and the data plane's gRPC face.
type MeshClient struct {
	conn *grpc.ClientConn
	stub v1.MeshServiceClient
	// Tenant of every request; empty means the token's ("default" without security; another: admin tokens only).
	Tenant string
}

// DialMesh connects to a meshd at host:port (with DefaultSecurity unless options say otherwise).
func DialMesh(target string, opts ...grpc.DialOption) (*MeshClient, error) {
	conn, err := dial(target, opts)
	if err != nil {
		return nil, err
	}
	return &MeshClient{conn: conn, stub: v1.NewMeshServiceClient(conn)}, nil
}

// Close closes the connection.
func (m *MeshClient) Close() error { return m.conn.Close() }

// Stub is the generated client, for anything the SDK does not wrap.
func (m *MeshClient) Stub() v1.MeshServiceClient { return m.stub }

// Ping returns the answering node and whether it reaches etcd.
func (m *MeshClient) Ping(ctx context.Context) (*v1.PingResponse, error) {
	return retrying(ctx, func(ctx context.Context) (*v1.PingResponse, error) {
		return m.stub.Ping(ctx, &v1.PingRequest{})
	})
}

// Members lists the live members as this node sees them.
func (m *MeshClient) Members(ctx context.Context) ([]*v1.NodeInfo, error) {
	r, err := retrying(ctx, func(ctx context.Context) (*v1.ListMembersResponse, error) {
		return m.stub.ListMembers(ctx, &v1.ListMembersRequest{})
	})
	return r.GetMembers(), err
}

// WatchMembers yields a snapshot of the members, then every join, update and leave.
func (m *MeshClient) WatchMembers(ctx context.Context) iter.Seq2[*v1.MemberEvent, error] {
	return stream(ctx, func(ctx context.Context) (interface {
		Recv() (*v1.MemberEvent, error)
	}, error) {
		return m.stub.WatchMembers(ctx, &v1.WatchMembersRequest{})
	})
}

// Leader returns the current leader of a role ("" means "mesh").
func (m *MeshClient) Leader(ctx context.Context, role string) (*v1.LeaderInfo, error) {
	r, err := retrying(ctx, func(ctx context.Context) (*v1.GetLeaderResponse, error) {
		return m.stub.GetLeader(ctx, &v1.GetLeaderRequest{Role: role})
	})
	return r.GetLeader(), err
}

// WatchLeader yields the current leader of a role, then every change.
func (m *MeshClient) WatchLeader(ctx context.Context, role string) iter.Seq2[*v1.LeaderEvent, error] {
	return stream(ctx, func(ctx context.Context) (interface {
		Recv() (*v1.LeaderEvent, error)
	}, error) {
		return m.stub.WatchLeader(ctx, &v1.WatchLeaderRequest{Role: role})
	})
}

// RegisterName registers a cluster-unique name for an agent on this node (ErrAlreadyExists with
// reason NAME_TAKEN when another owner holds it; registering the same again is idempotent).
func (m *MeshClient) RegisterName(ctx context.Context, name, agentID string, metadata map[string]string) (*v1.NameEntry, error) {
	r, err := retrying(ctx, func(ctx context.Context) (*v1.RegisterNameResponse, error) {
		return m.stub.RegisterName(ctx, &v1.RegisterNameRequest{Tenant: m.Tenant, Name: name,
			Target: &v1.AgentRef{AgentId: agentID}, Metadata: metadata})
	})
	return r.GetEntry(), err
}

// UnregisterName removes a name this node owns.
func (m *MeshClient) UnregisterName(ctx context.Context, name string) error {
	_, err := m.stub.UnregisterName(ctx, &v1.UnregisterNameRequest{Tenant: m.Tenant, Name: name})
	return Translate(err)
}

// Lookup resolves a name from the node's cache (ErrNotFound when absent).
func (m *MeshClient) Lookup(ctx context.Context, name string) (*v1.NameEntry, error) {
	r, err := retrying(ctx, func(ctx context.Context) (*v1.LookupResponse, error) {
		return m.stub.Lookup(ctx, &v1.LookupRequest{Tenant: m.Tenant, Name: name})
	})
	return r.GetEntry(), err
}

// SetTenantQuota sets a tenant's whole quota, kept in etcd and enforced by every node (admin only; a
// limit left 0 is unlimited; creates the tenant). Setting the same quota again is harmless, so it is
// retried on UNAVAILABLE. Over a limit, calls fail RESOURCE_EXHAUSTED with reason QUOTA_EXCEEDED.
func (m *MeshClient) SetTenantQuota(ctx context.Context, quota *v1.TenantQuota) (*v1.TenantQuota, error) {
	return retrying(ctx, func(ctx context.Context) (*v1.TenantQuota, error) {
		return m.stub.SetTenantQuota(ctx, &v1.SetTenantQuotaRequest{Quota: quota})
	})
}

// TenantUsage returns a tenant's quota and what it uses now (empty tenant: the caller's; only an admin
// may name another).
func (m *MeshClient) TenantUsage(ctx context.Context, tenant string) (*v1.TenantUsage, error) {
	return retrying(ctx, func(ctx context.Context) (*v1.TenantUsage, error) {
		return m.stub.GetTenantUsage(ctx, &v1.GetTenantUsageRequest{Tenant: tenant})
	})
}

// Names lists the tenant's names, optionally by prefix.
func (m *MeshClient) Names(ctx context.Context, prefix string) ([]*v1.NameEntry, error) {
	r, err := retrying(ctx, func(ctx context.Context) (*v1.ListNamesResponse, error) {
		return m.stub.ListNames(ctx, &v1.ListNamesRequest{Tenant: m.Tenant, Prefix: prefix})
	})
	return r.GetEntries(), err
}

// JoinGroup adds an agent on this node to a group (idempotent).
func (m *MeshClient) JoinGroup(ctx context.Context, group, agentID string) error {
	_, err := retrying(ctx, func(ctx context.Context) (*v1.JoinGroupResponse, error) {
		return m.stub.JoinGroup(ctx, &v1.JoinGroupRequest{Tenant: m.Tenant, Group: group, Member: &v1.AgentRef{AgentId: agentID}})
	})
	return err
}

// LeaveGroup removes an agent on this node from a group; false when it was not a member.
func (m *MeshClient) LeaveGroup(ctx context.Context, group, agentID string) (bool, error) {
	r, err := m.stub.LeaveGroup(ctx, &v1.LeaveGroupRequest{Tenant: m.Tenant, Group: group, Member: &v1.AgentRef{AgentId: agentID}})
	return r.GetRemoved(), Translate(err)
}

// GroupMembers lists a group's members cluster-wide, ordered by (node, agent).
func (m *MeshClient) GroupMembers(ctx context.Context, group string) ([]*v1.GroupMember, error) {
	r, err := retrying(ctx, func(ctx context.Context) (*v1.GroupMembersResponse, error) {
		return m.stub.GroupMembers(ctx, &v1.GroupMembersRequest{Tenant: m.Tenant, Group: group})
	})
	return r.GetMembers(), err
}

// Groups lists the tenant's groups with their member counts.
func (m *MeshClient) Groups(ctx context.Context) ([]*v1.GroupSummary, error) {
	r, err := retrying(ctx, func(ctx context.Context) (*v1.ListGroupsResponse, error) {
		return m.stub.ListGroups(ctx, &v1.ListGroupsRequest{Tenant: m.Tenant})
	})
	return r.GetGroups(), err
}

// Send sends a one-way message on the data plane; the ids of the messages sent (one per receiver).
func (m *MeshClient) Send(ctx context.Context, to Destination, payload []byte) ([]uint64, error) {
	req := &v1.SendRequest{Tenant: m.Tenant, Payload: payload}
	switch {
	case to.Agent != nil:
		req.To = &v1.SendRequest_ToAgent{ToAgent: to.Agent}
	case to.Group != nil:
		req.To = &v1.SendRequest_ToGroup{ToGroup: to.Group}
	default:
		req.To = &v1.SendRequest_ToName{ToName: to.Name}
	}
	r, err := m.stub.Send(ctx, req)
	return r.GetMessageIds(), Translate(err)
}

// Call sends a call on the data plane and waits for the reply; ctx's deadline is the call's
// deadline (5 s when ctx has none).
func (m *MeshClient) Call(ctx context.Context, to Destination, payload []byte) (*v1.CallResponse, error) {
	req := &v1.CallRequest{Tenant: m.Tenant, Payload: payload, TimeoutMs: timeoutMs(ctx, 5*time.Second)}
	switch {
	case to.Agent != nil:
		req.To = &v1.CallRequest_ToAgent{ToAgent: to.Agent}
	case to.Group != nil:
		req.To = &v1.CallRequest_ToGroup{ToGroup: to.Group}
	default:
		req.To = &v1.CallRequest_ToName{ToName: to.Name}
	}
	r, err := m.stub.Call(ctx, req)
	return r, Translate(err)
}

// Subscribe opens an endpoint on this node with the given names and groups and yields what it
// receives (the first item carries the endpoint's address); the endpoint goes when ctx ends.
func (m *MeshClient) Subscribe(ctx context.Context, names, groups []string, maxPending uint32) iter.Seq2[*v1.SubscribeResponse, error] {
	return stream(ctx, func(ctx context.Context) (interface {
		Recv() (*v1.SubscribeResponse, error)
	}, error) {
		return m.stub.Subscribe(ctx, &v1.SubscribeRequest{Tenant: m.Tenant, Names: names, Groups: groups, MaxPending: maxPending})
	})
}

// timeoutMs is what is left of ctx's deadline in milliseconds (at least 1), or fallback.
func timeoutMs(ctx context.Context, fallback time.Duration) uint32 {
	left := fallback
	if deadline, ok := ctx.Deadline(); ok {
		left = time.Until(deadline)
	}
	if left < time.Millisecond {
		return 1
	}
	return uint32(left / time.Millisecond)
}
