package mabeam

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/mabeam/mabeam/clients/go/gen/mabeamv1"
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
