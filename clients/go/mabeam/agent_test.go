package mabeam

import (
	"context"
	"errors"
	"testing"
	"time"

	v1 "github.com/mabeam/mabeam/clients/go/gen/mabeamv1"
	"github.com/vmihailenco/msgpack/v5"
	"google.golang.org/grpc/codes"
)

// The payload convention shared with agentd (docs/sdks.md): {"to","msg"} in, {"ok"} or {"error"} out.
func TestDispatchFollowsAgentdsPayloadConvention(t *testing.T) {
	var sawDeadline bool
	agent := &Agent{OnCall: func(ctx context.Context, in *Incoming) (any, error) {
		_, sawDeadline = ctx.Deadline()
		var msg map[string]any
		if err := in.Decode(&msg); err != nil {
			return nil, err
		}
		if msg["fail"] == true {
			return nil, &Error{Code: codes.NotFound, Message: "nope"}
		}
		return map[string]any{"got": msg["x"]}, nil
	}}
	call := func(msg any) map[string]any {
		payload, _ := msgpack.Marshal(map[string]any{"to": "me", "msg": msg})
		env := &v1.Envelope{Kind: v1.MessageKind_MESSAGE_KIND_CALL, DeadlineUnixMs: time.Now().Add(time.Second).UnixMilli()}
		var out map[string]any
		if err := msgpack.Unmarshal(agent.dispatch(context.Background(), &v1.AgentDelivery{Envelope: env, Payload: payload}, true), &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if out := call(map[string]any{"x": 7}); out["ok"].(map[string]any)["got"] != int8(7) {
		t.Fatalf("reply: %#v", out)
	}
	if !sawDeadline {
		t.Fatal("the handler's ctx must carry the call's deadline")
	}
	out := call(map[string]any{"fail": true})
	if e := out["error"].(map[string]any); e["code"] != "NOT_FOUND" || e["message"] != "nope" {
		t.Fatalf("error reply: %#v", out)
	}
}

func TestCallOutsideAStreamIsUnavailable(t *testing.T) {
	agent := &Agent{}
	agent.init()
	err := agent.Call(context.Background(), "x", 1, nil)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("got %v", err)
	}
}
