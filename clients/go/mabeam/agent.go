package mabeam

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/mabeam/mabeam/clients/go/gen/mabeamv1"
	"github.com/vmihailenco/msgpack/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// Incoming is a cast or call delivered to an Agent.
type Incoming struct {
	// Msg is the message, as msgpack; Decode turns it into a Go value.
	Msg msgpack.RawMessage
	// Sender is who sent it (tenant, node, agent id).
	Sender *v1.AgentRef
	// IsCall is true when the sender waits for a reply.
	IsCall bool
	// Envelope is the data-plane header (deadline, trace context, ...).
	Envelope *v1.Envelope
}

// Decode decodes the message into v (a pointer), e.g. a struct with msgpack tags or *any.
func (in *Incoming) Decode(v any) error { return msgpack.Unmarshal(in.Msg, v) }

// Agent is an external agent: a Go process that is an agent on the mesh. It attaches to its
// host's meshd over one MeshService.AttachAgent stream, registers Names and Groups, and handles
// casts and calls one at a time, in order; agentd's agents call it by name as they call each
// other, and it calls them (Call, Cast). When the stream drops it reconnects with exponential
// backoff and attaches again. Payloads follow agentd's convention (docs/sdks.md).
type Agent struct {
	// Endpoint is the host's meshd (host:port).
	Endpoint string
	Names    []string
	Groups   []string
	// Tenant; empty means "default".
	Tenant string
	// MaxPending bounds the mailbox at meshd; beyond it senders get RESOURCE_EXHAUSTED (0: 1024).
	MaxPending uint32
	// OnCall answers a call; ctx carries the call's deadline, so calls made with it keep it.
	// An *Error keeps its code at the caller; any other error arrives as UNKNOWN.
	OnCall func(ctx context.Context, in *Incoming) (any, error)
	// OnCast handles a cast.
	OnCast func(ctx context.Context, in *Incoming) error
	// OnBounce, if set, hears about this agent's casts that could not be delivered.
	OnBounce func(code codes.Code, message string)
	// BackoffMin and BackoffMax bound the reconnect delay (defaults 50 ms and 2 s).
	BackoffMin, BackoffMax time.Duration
	// DialOptions for the connection (plaintext when empty).
	DialOptions []grpc.DialOption

	mu          sync.Mutex
	ref         *v1.AgentRef
	send        func(*v1.AgentStreamIn) error
	results     map[uint64]chan *v1.AgentOutboundResult
	nextID      atomic.Uint64
	attached    chan struct{}
	attachments atomic.Int64
	lastErr     atomic.Value
}

// Ref is the agent's address while attached (nil otherwise).
func (a *Agent) Ref() *v1.AgentRef {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ref
}

// Attachments counts how often the agent attached (1 + reconnects).
func (a *Agent) Attachments() int64 { return a.attachments.Load() }

// Start runs the agent in the background until ctx ends and waits until it is attached (or
// returns the attach error, e.g. ErrAlreadyExists for a taken name, when ctx ends first).
func (a *Agent) Start(ctx context.Context, waitFor time.Duration) error {
	a.init()
	errs := make(chan error, 1)
	go func() { errs <- a.Run(ctx) }()
	timer := time.NewTimer(waitFor)
	defer timer.Stop()
	select {
	case <-a.attachedChan():
		return nil
	case err := <-errs:
		return err
	case <-timer.C:
		if last, ok := a.lastErr.Load().(error); ok {
			return last // why the latest attach failed (e.g. ErrAlreadyExists, reason NAME_TAKEN)
		}
		return &Error{Code: codes.DeadlineExceeded, Message: "not attached in time"}
	}
}

func (a *Agent) init() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.attached == nil {
		a.attached = make(chan struct{})
		a.results = map[uint64]chan *v1.AgentOutboundResult{}
	}
}

func (a *Agent) attachedChan() chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.attached
}

// errNotAttached answers calls and casts made while the agent has no stream.
var errNotAttached = &Error{Code: codes.Unavailable, Message: "the agent is not attached"}

// Run attaches and serves until ctx ends, reconnecting with backoff. It returns ctx's error, or
// at once an attach error that retrying cannot fix (INVALID_ARGUMENT) when it never attached.
func (a *Agent) Run(ctx context.Context) error {
	a.init()
	lo, hi := a.BackoffMin, a.BackoffMax
	if lo <= 0 {
		lo = 50 * time.Millisecond
	}
	if hi <= 0 {
		hi = 2 * time.Second
	}
	conn, err := dial(a.Endpoint, a.DialOptions)
	if err != nil {
		return err
	}
	defer conn.Close()
	stub := v1.NewMeshServiceClient(conn)
	delay := lo
	for {
		attachedBefore := a.attachments.Load()
		err := a.serveOnce(ctx, stub)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			a.lastErr.Store(err)
		}
		var merr *Error
		if errors.As(err, &merr) && merr.Code == codes.InvalidArgument && a.attachments.Load() == 0 {
			return merr
		}
		if a.attachments.Load() > attachedBefore {
			delay = lo
		}
		jitter := time.Duration(float64(delay) * (0.5 + rand.Float64()))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(jitter):
		}
		delay = min(delay*2, hi)
	}
}

func (a *Agent) serveOnce(ctx context.Context, stub v1.MeshServiceClient) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := stub.AttachAgent(ctx)
	if err != nil {
		return Translate(err)
	}
	var sendMu sync.Mutex
	send := func(m *v1.AgentStreamIn) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(m)
	}
	if err := send(&v1.AgentStreamIn{Body: &v1.AgentStreamIn_Attach{Attach: &v1.AttachAgentRequest{
		Tenant: a.Tenant, Names: a.Names, Groups: a.Groups, MaxPending: a.MaxPending}}}); err != nil {
		return Translate(err)
	}
	deliveries := make(chan *v1.AgentDelivery, 64)
	defer close(deliveries)
	go a.handle(ctx, deliveries, send)
	defer a.detach()
	for {
		out, err := stream.Recv()
		if err != nil {
			return Translate(err)
		}
		switch body := out.Body.(type) {
		case *v1.AgentStreamOut_Attached:
			a.mu.Lock()
			a.ref = body.Attached.GetEndpoint()
			a.send = send
			close(a.attached)
			a.mu.Unlock()
			a.attachments.Add(1)
		case *v1.AgentStreamOut_Delivery:
			deliveries <- body.Delivery
		case *v1.AgentStreamOut_Result:
			a.mu.Lock()
			ch, ok := a.results[body.Result.GetRequestId()]
			delete(a.results, body.Result.GetRequestId())
			a.mu.Unlock()
			if ok {
				ch <- body.Result
			}
		}
	}
}

func (a *Agent) detach() {
	a.mu.Lock()
	defer a.mu.Unlock()
	select {
	case <-a.attached:
		a.attached = make(chan struct{})
	default:
	}
	a.ref, a.send = nil, nil
	for id, ch := range a.results {
		ch <- &v1.AgentOutboundResult{RequestId: id, Code: int32(codes.Unavailable), Message: "the agent's stream ended"}
	}
	a.results = map[uint64]chan *v1.AgentOutboundResult{}
}

type callBody struct {
	To     string             `msgpack:"to"`
	Msg    msgpack.RawMessage `msgpack:"msg"`
	Sender *string            `msgpack:"sender,omitempty"`
}

type errorBody struct {
	Code    string `msgpack:"code"`
	Message string `msgpack:"message"`
}

func (a *Agent) handle(ctx context.Context, deliveries <-chan *v1.AgentDelivery, send func(*v1.AgentStreamIn) error) {
	for d := range deliveries {
		env := d.GetEnvelope()
		if env.GetKind() == v1.MessageKind_MESSAGE_KIND_ERROR {
			if a.OnBounce != nil {
				a.OnBounce(codes.Code(env.GetErrorCode()), env.GetErrorMessage())
			}
			continue
		}
		isCall := env.GetKind() == v1.MessageKind_MESSAGE_KIND_CALL
		reply := a.dispatch(ctx, d, isCall)
		_ = send(&v1.AgentStreamIn{Body: &v1.AgentStreamIn_Handled{Handled: &v1.AgentHandled{DeliveryId: d.GetDeliveryId(), Reply: reply}}})
	}
}

func (a *Agent) dispatch(ctx context.Context, d *v1.AgentDelivery, isCall bool) []byte {
	env := d.GetEnvelope()
	var body map[string]msgpack.RawMessage
	if err := msgpack.Unmarshal(d.GetPayload(), &body); err != nil {
		if isCall {
			return mustPack(map[string]any{"error": errorBody{"INVALID_ARGUMENT", "undecodable payload: " + err.Error()}})
		}
		return nil
	}
	in := &Incoming{Msg: body["msg"], Sender: env.GetSender(), IsCall: isCall, Envelope: env}
	if !isCall {
		if a.OnCast != nil {
			_ = a.OnCast(ctx, in)
		}
		return nil
	}
	if deadline := env.GetDeadlineUnixMs(); deadline > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, time.UnixMilli(deadline))
		defer cancel()
	}
	if a.OnCall == nil {
		return mustPack(map[string]any{"error": errorBody{"UNIMPLEMENTED", "this agent does not handle calls"}})
	}
	value, err := a.OnCall(ctx, in)
	if err != nil {
		var merr *Error
		if errors.As(err, &merr) {
			return mustPack(map[string]any{"error": errorBody{CodeName(merr.Code), merr.Message}})
		}
		return mustPack(map[string]any{"error": errorBody{"UNKNOWN", err.Error()}})
	}
	data, err := msgpack.Marshal(map[string]any{"ok": value})
	if err != nil {
		return mustPack(map[string]any{"error": errorBody{"INTERNAL", "cannot encode the reply: " + err.Error()}})
	}
	return data
}

func mustPack(v any) []byte {
	data, _ := msgpack.Marshal(v)
	return data
}

func (a *Agent) outbound(ctx context.Context, req *v1.AgentOutbound) (*v1.AgentOutboundResult, error) {
	a.mu.Lock()
	send := a.send
	if send == nil {
		a.mu.Unlock()
		return nil, errNotAttached
	}
	req.RequestId = a.nextID.Add(1)
	ch := make(chan *v1.AgentOutboundResult, 1)
	a.results[req.RequestId] = ch
	a.mu.Unlock()
	if err := send(&v1.AgentStreamIn{Body: &v1.AgentStreamIn_Outbound{Outbound: req}}); err != nil {
		a.mu.Lock()
		delete(a.results, req.RequestId)
		a.mu.Unlock()
		return nil, errNotAttached
	}
	select {
	case result := <-ch:
		if result.GetCode() != 0 {
			return nil, &Error{Code: codes.Code(result.GetCode()), Message: result.GetMessage()}
		}
		return result, nil
	case <-ctx.Done():
		a.mu.Lock()
		delete(a.results, req.RequestId)
		a.mu.Unlock()
		return nil, Translate(ctx.Err())
	}
}

// Call calls an agent by name and decodes its reply into reply (a pointer; nil discards it).
// ctx's deadline is the call's deadline (5 s without one): inside OnCall, pass the handler's ctx
// and the chain keeps the deadline of the call being handled.
func (a *Agent) Call(ctx context.Context, to string, msg any, reply any) error {
	payload, err := msgpack.Marshal(map[string]any{"to": to, "msg": msg})
	if err != nil {
		return &Error{Code: codes.InvalidArgument, Message: "cannot encode the message: " + err.Error()}
	}
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) <= 0 {
		return &Error{Code: codes.DeadlineExceeded, Message: "the deadline passed before the call was sent"}
	}
	result, err := a.outbound(ctx, &v1.AgentOutbound{To: &v1.AgentOutbound_ToName{ToName: to}, Payload: payload,
		Call: true, TimeoutMs: timeoutMs(ctx, 5*time.Second)})
	if err != nil {
		return err
	}
	var body struct {
		Ok    msgpack.RawMessage `msgpack:"ok"`
		Error *errorBody         `msgpack:"error"`
	}
	if err := msgpack.Unmarshal(result.GetPayload(), &body); err != nil {
		return &Error{Code: codes.Internal, Message: "undecodable reply: " + err.Error()}
	}
	if body.Error != nil {
		return errorFromName(body.Error.Code, body.Error.Message)
	}
	if reply == nil || body.Ok == nil {
		return nil
	}
	return msgpack.Unmarshal(body.Ok, reply)
}

// Cast sends a one-way message to an agent by name (ErrNotFound at once for an unknown name).
func (a *Agent) Cast(ctx context.Context, to string, msg any) error {
	var sender any
	if len(a.Names) > 0 {
		sender = a.Names[0]
	}
	payload, err := msgpack.Marshal(map[string]any{"to": to, "msg": msg, "sender": sender})
	if err != nil {
		return &Error{Code: codes.InvalidArgument, Message: "cannot encode the message: " + err.Error()}
	}
	_, err = a.outbound(ctx, &v1.AgentOutbound{To: &v1.AgentOutbound_ToName{ToName: to}, Payload: payload})
	return err
}

// CastGroup casts to every member of a group cluster-wide (one=false) or to one in turn (one=true).
func (a *Agent) CastGroup(ctx context.Context, group string, msg any, one bool) error {
	mode := "all"
	if one {
		mode = "one"
	}
	var sender any
	if len(a.Names) > 0 {
		sender = a.Names[0]
	}
	payload, err := msgpack.Marshal(map[string]any{"group": group, "mode": mode, "msg": msg, "sender": sender, "origin": []byte{}})
	if err != nil {
		return &Error{Code: codes.InvalidArgument, Message: "cannot encode the message: " + err.Error()}
	}
	_, err = a.outbound(ctx, &v1.AgentOutbound{To: &v1.AgentOutbound_ToGroup{ToGroup: ToGroup(group, one).Group}, Payload: payload})
	return err
}
