package mabeam

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"iter"
	"sync"
	"time"

	v1 "github.com/mabeam/mabeam/clients/go/gen/mabeamv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
)

// retryableReasons are the UNAVAILABLE answers after which a coordinator call is repeated on the
// leader: every mutating call carries an idempotency key, so the repeat cannot apply twice.
var retryableReasons = map[string]bool{"WRONG_NODE": true, "NOT_DURABLE": true, "ETCD_UNAVAILABLE": true, "": true}

// CoordinatorClient talks to the active coordinator, whichever node that is: a standby's
// WRONG_NODE answer names the leader and the client follows it; during a failover calls are
// retried until FailoverTimeout.
type CoordinatorClient struct {
	endpoints []string
	opts      []grpc.DialOption
	mu        sync.Mutex
	conns     map[string]*grpc.ClientConn
	current   string
	tried     int
	// Tenant of every request; empty means the token's ("default" without security; another: admin tokens only).
	Tenant string
	// FailoverTimeout bounds how long a call keeps retrying without a leader (default 15 s).
	FailoverTimeout time.Duration
	// Redirects counts how often a WRONG_NODE answer sent the client to another node.
	Redirects int
}

// DialCoordinator prepares a client for the coordinators at the given host:port endpoints
// (any of them; connections are opened lazily).
func DialCoordinator(endpoints []string, opts ...grpc.DialOption) (*CoordinatorClient, error) {
	if len(endpoints) == 0 {
		return nil, &Error{Code: codes.InvalidArgument, Message: "at least one coordinator endpoint is required"}
	}
	return &CoordinatorClient{endpoints: endpoints, opts: opts, conns: map[string]*grpc.ClientConn{},
		current: endpoints[0], FailoverTimeout: 15 * time.Second}, nil
}

// Close closes every connection.
func (c *CoordinatorClient) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, conn := range c.conns {
		_ = conn.Close()
	}
	c.conns = map[string]*grpc.ClientConn{}
	return nil
}

func (c *CoordinatorClient) stub() (v1.CoordinatorServiceClient, string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	endpoint := c.current
	conn, ok := c.conns[endpoint]
	if !ok {
		opts, err := c.dialOptions()
		if err != nil {
			return nil, endpoint, err
		}
		if conn, err = dial(endpoint, append(opts, c.opts...)); err != nil {
			return nil, endpoint, err
		}
		c.conns[endpoint] = conn
	}
	return v1.NewCoordinatorServiceClient(conn), endpoint, nil
}

// dialOptions: plaintext plus HTTP/2 keepalive. A leader that goes silent (its host cut off, its
// process paused) keeps the TCP connection open and never ends a stream; a ping every 2 s unanswered
// for 2 s breaks the connection, so the bid stream reopens on the new leader (the coordinator
// accepts pings this often; the Python SDK does the same).
// Without dial options of the caller's, the credentials are DefaultSecurity's.
func (c *CoordinatorClient) dialOptions() ([]grpc.DialOption, error) {
	opts := []grpc.DialOption{grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 2 * time.Second,
		Timeout: 2 * time.Second, PermitWithoutStream: true})}
	if len(c.opts) > 0 {
		return opts, nil
	}
	creds, err := securityOptions()
	return append(opts, creds...), err
}

// failedOver decides, after an error from endpoint, whether to retry and where; it returns the
// error to give up with, or nil to retry after the returned delay.
func (c *CoordinatorClient) failedOver(err error, endpoint string, deadline time.Time) (time.Duration, error) {
	merr := Translate(err).(*Error)
	// A connection torn down under a live call (a killed coordinator) can surface as INTERNAL or
	// UNKNOWN with no mabeam reason: as safe to repeat as UNAVAILABLE, given the idempotency keys.
	torn := (merr.Code == codes.Internal || merr.Code == codes.Unknown) && merr.Reason == ""
	if !(merr.Code == codes.Unavailable && retryableReasons[merr.Reason]) && !torn || time.Now().After(deadline) {
		return 0, merr
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if hint := merr.Metadata["leader"]; merr.Reason == "WRONG_NODE" && hint != "" && hint != endpoint {
		c.current = hint
		c.Redirects++
		return 0, nil
	}
	c.tried++
	c.current = c.endpoints[c.tried%len(c.endpoints)]
	return time.Duration(min(50*c.tried, 200)) * time.Millisecond, nil
}

func invoke[T any](ctx context.Context, c *CoordinatorClient, call func(context.Context, v1.CoordinatorServiceClient) (T, error)) (T, error) {
	deadline := time.Now().Add(c.FailoverTimeout)
	for {
		stub, endpoint, err := c.stub()
		var value T
		if err == nil {
			value, err = call(ctx, stub)
			if err == nil {
				return value, nil
			}
		}
		wait, fatal := c.failedOver(err, endpoint, deadline)
		if fatal != nil {
			return value, fatal
		}
		select {
		case <-ctx.Done():
			return value, Translate(ctx.Err())
		case <-time.After(wait):
		}
	}
}

func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func jsonText(value any) (string, error) {
	switch v := value.(type) {
	case string:
		return v, nil
	case []byte:
		return string(v), nil
	}
	return marshalJSON(value)
}

// Leader says who leads the coordinator role (answered by any node).
func (c *CoordinatorClient) Leader(ctx context.Context) (*v1.GetCoordinatorLeaderResponse, error) {
	return invoke(ctx, c, func(ctx context.Context, s v1.CoordinatorServiceClient) (*v1.GetCoordinatorLeaderResponse, error) {
		return s.GetCoordinatorLeader(ctx, &v1.GetCoordinatorLeaderRequest{})
	})
}

// CreateOptions are the optional fields of an instance.
type CreateOptions struct {
	// InstanceID makes the create idempotent; generated when empty.
	InstanceID, Seller, BindVariable, BindField string
	Escrow                                      bool
}

func (c *CoordinatorClient) create(ctx context.Context, family, kind string, config any, o CreateOptions) (*v1.Instance, error) {
	configJSON, err := jsonText(config)
	if err != nil {
		return nil, err
	}
	if o.InstanceID == "" {
		o.InstanceID = newID()
	}
	req := &v1.CreateInstanceRequest{Tenant: c.Tenant, Kind: kind, ConfigJson: configJSON, InstanceId: o.InstanceID,
		Escrow: o.Escrow, Seller: o.Seller, BindVariable: o.BindVariable, BindField: o.BindField}
	return invoke(ctx, c, func(ctx context.Context, s v1.CoordinatorServiceClient) (*v1.Instance, error) {
		switch family {
		case "negotiation":
			return s.CreateNegotiation(ctx, req)
		case "vote":
			return s.CreateVote(ctx, req)
		case "market":
			return s.CreateMarket(ctx, req)
		}
		return s.CreateAuction(ctx, req)
	})
}

// CreateAuction creates an auction (sealed, english, dutch, multi_unit, combinatorial); times are absolute ms.
func (c *CoordinatorClient) CreateAuction(ctx context.Context, kind string, config any, o CreateOptions) (*v1.Instance, error) {
	return c.create(ctx, "auction", kind, config, o)
}

// CreateNegotiation creates a contract_net, alternating_offers or mediated_bargaining session.
func (c *CoordinatorClient) CreateNegotiation(ctx context.Context, kind string, config any, o CreateOptions) (*v1.Instance, error) {
	return c.create(ctx, "negotiation", kind, config, o)
}

// CreateVote creates a vote (kind "vote").
func (c *CoordinatorClient) CreateVote(ctx context.Context, config any, o CreateOptions) (*v1.Instance, error) {
	return c.create(ctx, "vote", "vote", config, o)
}

// CreateMarket creates a double_auction or call_market.
func (c *CoordinatorClient) CreateMarket(ctx context.Context, kind string, config any, o CreateOptions) (*v1.Instance, error) {
	return c.create(ctx, "market", kind, config, o)
}

// Get returns an instance of any family (auction, negotiation, vote, market).
func (c *CoordinatorClient) Get(ctx context.Context, id string) (*v1.Instance, error) {
	return invoke(ctx, c, func(ctx context.Context, s v1.CoordinatorServiceClient) (*v1.Instance, error) {
		return s.GetAuction(ctx, &v1.GetInstanceRequest{Id: id})
	})
}

// List returns the tenant's instances, optionally in one state (open, concluded, cancelled).
func (c *CoordinatorClient) List(ctx context.Context, state string) ([]*v1.Instance, error) {
	r, err := invoke(ctx, c, func(ctx context.Context, s v1.CoordinatorServiceClient) (*v1.ListInstancesResponse, error) {
		return s.ListAuctions(ctx, &v1.ListInstancesRequest{Tenant: c.Tenant, State: state})
	})
	return r.GetInstances(), err
}

// Cancel cancels an open instance (escrow released).
func (c *CoordinatorClient) Cancel(ctx context.Context, id, reason string) (*v1.Instance, error) {
	return invoke(ctx, c, func(ctx context.Context, s v1.CoordinatorServiceClient) (*v1.Instance, error) {
		return s.CancelAuction(ctx, &v1.CancelInstanceRequest{Id: id, Reason: reason})
	})
}

// Close closes an instance now where its mechanism allows it.
func (c *CoordinatorClient) CloseInstance(ctx context.Context, id string) (*v1.Instance, error) {
	return invoke(ctx, c, func(ctx context.Context, s v1.CoordinatorServiceClient) (*v1.Instance, error) {
		return s.CloseInstance(ctx, &v1.CloseInstanceRequest{Id: id})
	})
}

func (c *CoordinatorClient) submit(ctx context.Context, method string, id string, event any, clientEventID string) (*v1.SubmitEventResponse, error) {
	eventJSON, err := jsonText(event)
	if err != nil {
		return nil, err
	}
	if clientEventID == "" {
		clientEventID = newID()
	}
	req := &v1.SubmitEventRequest{Id: id, EventJson: eventJSON, ClientEventId: clientEventID}
	return invoke(ctx, c, func(ctx context.Context, s v1.CoordinatorServiceClient) (*v1.SubmitEventResponse, error) {
		switch method {
		case "negotiate":
			return s.Negotiate(ctx, req)
		case "vote":
			return s.CastVote(ctx, req)
		case "order":
			return s.PlaceOrder(ctx, req)
		}
		return s.SubmitBid(ctx, req)
	})
}

// SubmitBid submits one bid, acknowledged once durable; the same clientEventID ("" generates one)
// makes a retry safe.
func (c *CoordinatorClient) SubmitBid(ctx context.Context, id string, event any, clientEventID string) (*v1.SubmitEventResponse, error) {
	return c.submit(ctx, "bid", id, event, clientEventID)
}

// Negotiate submits one negotiation event.
func (c *CoordinatorClient) Negotiate(ctx context.Context, id string, event any, clientEventID string) (*v1.SubmitEventResponse, error) {
	return c.submit(ctx, "negotiate", id, event, clientEventID)
}

// CastVote casts one ballot.
func (c *CoordinatorClient) CastVote(ctx context.Context, id string, event any, clientEventID string) (*v1.SubmitEventResponse, error) {
	return c.submit(ctx, "vote", id, event, clientEventID)
}

// PlaceOrder places a limit or market order (or a clear).
func (c *CoordinatorClient) PlaceOrder(ctx context.Context, id string, event any, clientEventID string) (*v1.SubmitEventResponse, error) {
	return c.submit(ctx, "order", id, event, clientEventID)
}

// CancelOrder cancels a resting order.
func (c *CoordinatorClient) CancelOrder(ctx context.Context, id, orderID, trader string) (*v1.SubmitEventResponse, error) {
	req := &v1.CancelOrderRequest{Id: id, OrderId: orderID, Trader: trader, ClientEventId: newID()}
	return invoke(ctx, c, func(ctx context.Context, s v1.CoordinatorServiceClient) (*v1.SubmitEventResponse, error) {
		return s.CancelOrder(ctx, req)
	})
}

// Book returns a market's price levels.
func (c *CoordinatorClient) Book(ctx context.Context, id string) (*v1.BookSnapshot, error) {
	return invoke(ctx, c, func(ctx context.Context, s v1.CoordinatorServiceClient) (*v1.BookSnapshot, error) {
		return s.GetBook(ctx, &v1.GetInstanceRequest{Id: id})
	})
}

// watching yields a watch's items. Watches are served by every node from etcd, so when the stream breaks
// the way a killed coordinator breaks it (UNAVAILABLE, or INTERNAL/UNKNOWN without a reason) it is opened
// again on the next node from the cursor after the last item (resume moves it), until FailoverTimeout
// passes without an item: the caller sees every item once, in order, and no transport error.
func watching[T any](ctx context.Context, c *CoordinatorClient, open func(context.Context, v1.CoordinatorServiceClient) (interface{ Recv() (T, error) }, error), resume func(T)) iter.Seq2[T, error] {
	return func(yield func(T, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var zero T
		deadline := time.Now().Add(c.FailoverTimeout)
		for {
			stub, endpoint, err := c.stub()
			var s interface{ Recv() (T, error) }
			if err == nil {
				s, err = open(ctx, stub)
			}
			for err == nil {
				var item T
				if item, err = s.Recv(); err == nil {
					resume(item)
					deadline = time.Now().Add(c.FailoverTimeout)
					if !yield(item, nil) {
						return
					}
				}
			}
			if errors.Is(err, io.EOF) {
				return
			}
			if ctx.Err() != nil {
				yield(zero, Translate(ctx.Err()))
				return
			}
			delay, failed := c.failedOver(err, endpoint, deadline)
			if failed != nil {
				yield(zero, failed)
				return
			}
			select {
			case <-ctx.Done():
				yield(zero, Translate(ctx.Err()))
				return
			case <-time.After(delay):
			}
		}
	}
}

// Watch yields an instance's accepted events from fromSeq, then a final one with FinalState set
// (resumed on another node after the next seq when a coordinator dies under it).
func (c *CoordinatorClient) Watch(ctx context.Context, id string, fromSeq int64) iter.Seq2[*v1.InstanceEvent, error] {
	req := &v1.WatchInstanceRequest{Id: id, FromSeq: fromSeq}
	return watching(ctx, c, func(ctx context.Context, s v1.CoordinatorServiceClient) (interface {
		Recv() (*v1.InstanceEvent, error)
	}, error) {
		return s.WatchAuction(ctx, req)
	}, func(e *v1.InstanceEvent) {
		if e.GetSeq() > 0 {
			req.FromSeq = e.GetSeq() + 1
		}
	})
}

// WatchTrades yields a market's trades from fromSeq (resumed from the last trade's seq, as the Python SDK).
func (c *CoordinatorClient) WatchTrades(ctx context.Context, id string, fromSeq int64) iter.Seq2[*v1.TradeEvent, error] {
	req := &v1.WatchInstanceRequest{Id: id, FromSeq: fromSeq}
	return watching(ctx, c, func(ctx context.Context, s v1.CoordinatorServiceClient) (interface {
		Recv() (*v1.TradeEvent, error)
	}, error) {
		return s.WatchTrades(ctx, req)
	}, func(t *v1.TradeEvent) { req.FromSeq = t.GetSeq() })
}

// CreateVariable creates a typed variable at version 1.
func (c *CoordinatorClient) CreateVariable(ctx context.Context, name string, schema, initial any, historyLimit int32) (*v1.Variable, error) {
	schemaJSON, err := jsonText(schema)
	if err != nil {
		return nil, err
	}
	initialJSON, err := marshalJSON(initial)
	if err != nil {
		return nil, err
	}
	req := &v1.CreateVariableRequest{Tenant: c.Tenant, Name: name, SchemaJson: schemaJSON, InitialJson: initialJSON, HistoryLimit: historyLimit}
	return invoke(ctx, c, func(ctx context.Context, s v1.CoordinatorServiceClient) (*v1.Variable, error) {
		return s.CreateVariable(ctx, req)
	})
}

// Variable returns a variable's current version.
func (c *CoordinatorClient) Variable(ctx context.Context, name string) (*v1.Variable, error) {
	return invoke(ctx, c, func(ctx context.Context, s v1.CoordinatorServiceClient) (*v1.Variable, error) {
		return s.GetVariable(ctx, &v1.GetVariableRequest{Tenant: c.Tenant, Name: name})
	})
}

// Variables lists the tenant's variables.
func (c *CoordinatorClient) Variables(ctx context.Context) ([]*v1.Variable, error) {
	r, err := invoke(ctx, c, func(ctx context.Context, s v1.CoordinatorServiceClient) (*v1.ListVariablesResponse, error) {
		return s.ListVariables(ctx, &v1.ListVariablesRequest{Tenant: c.Tenant})
	})
	return r.GetVariables(), err
}

// SetVariable is a compare-and-set: ErrAborted (reason VERSION_MISMATCH) when expectedVersion is stale.
func (c *CoordinatorClient) SetVariable(ctx context.Context, name string, value any, expectedVersion int64) (*v1.Variable, error) {
	valueJSON, err := marshalJSON(value)
	if err != nil {
		return nil, err
	}
	req := &v1.SetVariableRequest{Tenant: c.Tenant, Name: name, ValueJson: valueJSON, ExpectedVersion: expectedVersion}
	return invoke(ctx, c, func(ctx context.Context, s v1.CoordinatorServiceClient) (*v1.Variable, error) {
		return s.SetVariable(ctx, req)
	})
}

// VariableHistory returns the kept versions, oldest first.
func (c *CoordinatorClient) VariableHistory(ctx context.Context, name string) ([]*v1.Variable, error) {
	r, err := invoke(ctx, c, func(ctx context.Context, s v1.CoordinatorServiceClient) (*v1.VariableHistoryResponse, error) {
		return s.VariableHistory(ctx, &v1.VariableHistoryRequest{Tenant: c.Tenant, Name: name})
	})
	return r.GetVersions(), err
}

// WatchVariable yields versions from fromVersion (0: the current one), then each new one in order
// (resumed on another node after the last version when a coordinator dies under it).
func (c *CoordinatorClient) WatchVariable(ctx context.Context, name string, fromVersion int64) iter.Seq2[*v1.Variable, error] {
	req := &v1.WatchVariableRequest{Tenant: c.Tenant, Name: name, FromVersion: fromVersion}
	return watching(ctx, c, func(ctx context.Context, s v1.CoordinatorServiceClient) (interface {
		Recv() (*v1.Variable, error)
	}, error) {
		return s.WatchVariable(ctx, req)
	}, func(v *v1.Variable) { req.FromVersion = v.GetVersion() + 1 })
}

// Deposit credits an account.
func (c *CoordinatorClient) Deposit(ctx context.Context, agent string, amount int64) (*v1.Balance, error) {
	req := &v1.DepositRequest{Tenant: c.Tenant, Agent: agent, Amount: amount, ClientOpId: newID()}
	return invoke(ctx, c, func(ctx context.Context, s v1.CoordinatorServiceClient) (*v1.Balance, error) {
		return s.Deposit(ctx, req)
	})
}

// Transfer moves credit (ErrFailedPrecondition, reason INSUFFICIENT_FUNDS, rather than overdraw).
func (c *CoordinatorClient) Transfer(ctx context.Context, from, to string, amount int64) (*v1.TransferResponse, error) {
	req := &v1.TransferRequest{Tenant: c.Tenant, FromAgent: from, ToAgent: to, Amount: amount, ClientOpId: newID()}
	return invoke(ctx, c, func(ctx context.Context, s v1.CoordinatorServiceClient) (*v1.TransferResponse, error) {
		return s.Transfer(ctx, req)
	})
}

// Balance returns an account's available and held credit.
func (c *CoordinatorClient) Balance(ctx context.Context, agent string) (*v1.Balance, error) {
	return invoke(ctx, c, func(ctx context.Context, s v1.CoordinatorServiceClient) (*v1.Balance, error) {
		return s.GetBalance(ctx, &v1.GetBalanceRequest{Tenant: c.Tenant, Agent: agent})
	})
}

// Balances lists every account of the tenant.
func (c *CoordinatorClient) Balances(ctx context.Context) ([]*v1.Balance, error) {
	r, err := invoke(ctx, c, func(ctx context.Context, s v1.CoordinatorServiceClient) (*v1.ListBalancesResponse, error) {
		return s.ListBalances(ctx, &v1.ListBalancesRequest{Tenant: c.Tenant})
	})
	return r.GetBalances(), err
}

// ---------------------------------------------------------------------------- bid stream

// JSON decodes a *_json field of a response into a Go value.
func JSON[T any](text string) (T, error) {
	var value T
	if text == "" {
		return value, nil
	}
	err := json.Unmarshal([]byte(text), &value)
	return value, err
}
