package mabeam

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/mabeam/mabeam/clients/go/gen/mabeamv1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakeRuns serves events 1..5 of one run; its first stream breaks with UNAVAILABLE after event 3.
type fakeRuns struct {
	v1.UnimplementedRunServiceServer
	streams atomic.Int32
	cursors []int64
}

func (f *fakeRuns) StreamRun(req *v1.StreamRunRequest, s grpc.ServerStreamingServer[v1.RunEvent]) error {
	n := f.streams.Add(1)
	f.cursors = append(f.cursors, req.GetCursor())
	for seq := req.GetCursor() + 1; seq <= 5; seq++ {
		if n == 1 && seq == 4 {
			return status.Error(codes.Unavailable, "node going away")
		}
		if err := s.Send(&v1.RunEvent{RunId: req.GetRunId(), Seq: seq}); err != nil {
			return err
		}
	}
	return nil
}

func TestStreamResumesFromTheLastSeqAfterUnavailable(t *testing.T) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer()
	fake := &fakeRuns{}
	v1.RegisterRunServiceServer(server, fake)
	go func() { _ = server.Serve(listener) }()
	defer server.Stop()
	runs, err := DialRuns(listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer runs.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var seqs []int64
	for event, err := range runs.Stream(ctx, "run-1", 0, false) {
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, event.GetSeq())
	}
	if len(seqs) != 5 || seqs[0] != 1 || seqs[4] != 5 {
		t.Fatalf("events %v, want 1..5 once each", seqs)
	}
	if len(fake.cursors) != 2 || fake.cursors[1] != 3 {
		t.Fatalf("cursors %v, want [0 3]", fake.cursors)
	}
}

// fakeApprovals answers decisions on one pending tool call, "tc-1", as agentd does: the first decision is
// recorded (seq 7), the same one again is a replay, the other one is refused, an unknown call is NOT_FOUND.
type fakeApprovals struct {
	v1.UnimplementedRunServiceServer
	decided string
}

func (f *fakeApprovals) decide(req *v1.ToolCallDecisionRequest, decision string) (*v1.ToolCallDecisionResponse, error) {
	refuse := func(code codes.Code, reason, message string) error {
		st, err := status.New(code, message).WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: "mabeam.io"})
		if err != nil {
			return err
		}
		return st.Err()
	}
	switch {
	case req.GetToolCallId() != "tc-1":
		return nil, refuse(codes.NotFound, "APPROVAL_NOT_FOUND", "run-1 never asked about "+req.GetToolCallId())
	case f.decided == "":
		f.decided = decision
		return &v1.ToolCallDecisionResponse{Seq: 7}, nil
	case f.decided == decision:
		return &v1.ToolCallDecisionResponse{Seq: 7, Duplicate: true}, nil
	default:
		return nil, refuse(codes.FailedPrecondition, "APPROVAL_DECIDED", "tc-1 was "+f.decided)
	}
}

func (f *fakeApprovals) ApproveToolCall(_ context.Context, req *v1.ToolCallDecisionRequest) (*v1.ToolCallDecisionResponse, error) {
	return f.decide(req, "approved")
}

func (f *fakeApprovals) DenyToolCall(_ context.Context, req *v1.ToolCallDecisionRequest) (*v1.ToolCallDecisionResponse, error) {
	return f.decide(req, "denied")
}

func TestApproveAndDenyAnswerReplaysAndTypedErrors(t *testing.T) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer()
	v1.RegisterRunServiceServer(server, &fakeApprovals{})
	go func() { _ = server.Serve(listener) }()
	defer server.Stop()
	runs, err := DialRuns(listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer runs.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	first, err := runs.Approve(ctx, "run-1", "tc-1", "ok")
	if err != nil || first.GetDuplicate() || first.GetSeq() != 7 {
		t.Fatalf("first approval: %v, %v", first, err)
	}
	again, err := runs.Approve(ctx, "run-1", "tc-1", "ok")
	if err != nil || !again.GetDuplicate() || again.GetSeq() != 7 {
		t.Fatalf("replayed approval: %v, %v", again, err)
	}
	_, err = runs.Deny(ctx, "run-1", "tc-1", "no")
	if !errors.Is(err, ErrApprovalDecided) || !errors.Is(err, ErrFailedPrecondition) || errors.Is(err, ErrApprovalExpired) {
		t.Fatalf("deny after approve: %v, want ErrApprovalDecided", err)
	}
	var merr *Error
	if !errors.As(err, &merr) || merr.ErrorReason() != v1.ErrorReason_APPROVAL_DECIDED {
		t.Fatalf("reason of %v, want APPROVAL_DECIDED", err)
	}
	if _, err = runs.Approve(ctx, "run-1", "tc-9", ""); !errors.Is(err, ErrApprovalNotFound) {
		t.Fatalf("unknown call: %v, want ErrApprovalNotFound", err)
	}
}
