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

// RunClient talks to RunService: durable runs (start, append input frames, stream events with a
// resume cursor, cancel, inspect).
type RunClient struct {
	conn *grpc.ClientConn
	stub v1.RunServiceClient
	// Tenant of StartRun and ListRuns; empty means the token's ("default" without security; another: admin tokens only).
	Tenant string
	// ResumeFor bounds how long Stream keeps reconnecting without receiving an event (default 15 s).
	ResumeFor time.Duration
}

// DialRuns connects to a RunService at host:port.
func DialRuns(target string, opts ...grpc.DialOption) (*RunClient, error) {
	conn, err := dial(target, opts)
	if err != nil {
		return nil, err
	}
	return &RunClient{conn: conn, stub: v1.NewRunServiceClient(conn), ResumeFor: 15 * time.Second}, nil
}

// Close closes the connection.
func (r *RunClient) Close() error { return r.conn.Close() }

// Start starts a run (idempotent by runID: a repeat returns the run with created=false).
func (r *RunClient) Start(ctx context.Context, runID, agentType string, input any, labels map[string]string) (*v1.Run, bool, error) {
	inputJSON, err := marshalJSON(input)
	if err != nil {
		return nil, false, err
	}
	req := &v1.StartRunRequest{RunId: runID, Tenant: r.Tenant, AgentType: agentType, InputJson: inputJSON, Labels: labels}
	resp, err := retrying(ctx, func(ctx context.Context) (*v1.StartRunResponse, error) { return r.stub.StartRun(ctx, req) })
	return resp.GetRun(), resp.GetCreated(), err
}

// Append appends an input frame, idempotent by frameID (a repeat answers duplicate with the first seq).
func (r *RunClient) Append(ctx context.Context, runID, frameID, frameType string, payload any) (*v1.AppendFrameResponse, error) {
	payloadJSON, err := marshalJSON(payload)
	if err != nil {
		return nil, err
	}
	req := &v1.AppendFrameRequest{RunId: runID, FrameId: frameID, Type: frameType, PayloadJson: payloadJSON}
	return retrying(ctx, func(ctx context.Context) (*v1.AppendFrameResponse, error) { return r.stub.AppendFrame(ctx, req) })
}

// Cancel asks a run to end in its deterministic cancelled state.
func (r *RunClient) Cancel(ctx context.Context, runID, reason string) (*v1.CancelRunResponse, error) {
	req := &v1.CancelRunRequest{RunId: runID, Reason: reason}
	return retrying(ctx, func(ctx context.Context) (*v1.CancelRunResponse, error) { return r.stub.CancelRun(ctx, req) })
}

// Approve approves a tool call waiting for a human (a "tool.approval_requested" event of the run names
// its tool_call_id); note says why, for the log and the model. The decision is a durable input of the
// run: the same decision again answers Duplicate with the first seq (so it is retried on UNAVAILABLE).
// Errors, for errors.Is: ErrApprovalNotFound (the run never asked about that call), ErrApprovalDecided
// (denied already: a decision is final), ErrApprovalExpired (its deadline passed first), ErrRunTerminal.
func (r *RunClient) Approve(ctx context.Context, runID, toolCallID, note string) (*v1.ToolCallDecisionResponse, error) {
	req := &v1.ToolCallDecisionRequest{RunId: runID, ToolCallId: toolCallID, Note: note}
	return retrying(ctx, func(ctx context.Context) (*v1.ToolCallDecisionResponse, error) {
		return r.stub.ApproveToolCall(ctx, req)
	})
}

// Deny denies a tool call waiting for a human (the model is told, and may try something else); the same
// rules and errors as Approve (ErrApprovalDecided when it was approved already).
func (r *RunClient) Deny(ctx context.Context, runID, toolCallID, note string) (*v1.ToolCallDecisionResponse, error) {
	req := &v1.ToolCallDecisionRequest{RunId: runID, ToolCallId: toolCallID, Note: note}
	return retrying(ctx, func(ctx context.Context) (*v1.ToolCallDecisionResponse, error) { return r.stub.DenyToolCall(ctx, req) })
}

// Get returns a run.
func (r *RunClient) Get(ctx context.Context, runID string) (*v1.Run, error) {
	resp, err := retrying(ctx, func(ctx context.Context) (*v1.GetRunResponse, error) {
		return r.stub.GetRun(ctx, &v1.GetRunRequest{RunId: runID})
	})
	return resp.GetRun(), err
}

// List returns one page of runs (filters may be empty) and the next page's token.
func (r *RunClient) List(ctx context.Context, agentType, status string, pageSize int32, pageToken string) ([]*v1.Run, string, error) {
	req := &v1.ListRunsRequest{Tenant: r.Tenant, AgentType: agentType, Status: status, PageSize: pageSize, PageToken: pageToken}
	resp, err := retrying(ctx, func(ctx context.Context) (*v1.ListRunsResponse, error) { return r.stub.ListRuns(ctx, req) })
	return resp.GetRuns(), resp.GetNextPageToken(), err
}

// Stream yields a run's events after cursor (0: from the beginning), gap-free and in seq order; with
// follow it waits for new ones. When the stream breaks (UNAVAILABLE, a node gone) it reconnects with
// the last seq it yielded as the cursor, so nothing is missed or repeated; it gives up after
// ResumeFor without an event, and at once on any other error (e.g. FAILED_PRECONDITION/STALE_CURSOR).
func (r *RunClient) Stream(ctx context.Context, runID string, cursor int64, follow bool) iter.Seq2[*v1.RunEvent, error] {
	return func(yield func(*v1.RunEvent, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		delay := 50 * time.Millisecond
		quietSince := time.Now()
		for {
			s, err := r.stub.StreamRun(ctx, &v1.StreamRunRequest{RunId: runID, Cursor: cursor, Follow: follow})
			for err == nil {
				var event *v1.RunEvent
				event, err = s.Recv()
				if err == nil {
					if event.GetSeq() <= cursor {
						continue // a resend after reconnecting: already yielded
					}
					cursor, quietSince, delay = event.GetSeq(), time.Now(), 50*time.Millisecond
					if !yield(event, nil) {
						return
					}
				}
			}
			if errors.Is(err, io.EOF) {
				return
			}
			merr := Translate(err).(*Error)
			if merr.Code != codes.Unavailable || ctx.Err() != nil || time.Since(quietSince) > r.ResumeFor {
				yield(nil, merr)
				return
			}
			select {
			case <-ctx.Done():
				yield(nil, Translate(ctx.Err()))
				return
			case <-time.After(delay):
			}
			delay = min(delay*2, time.Second)
		}
	}
}
