package mabeam

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestTranslateReadsEveryRichDetail(t *testing.T) {
	st, err := status.New(codes.Unavailable, "standby").WithDetails(
		&errdetails.ErrorInfo{Reason: "WRONG_NODE", Domain: "mabeam.io", Metadata: map[string]string{"leader": "127.0.0.1:7118"}},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(250 * time.Millisecond)},
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "name", Description: "bad"}}},
	)
	if err != nil {
		t.Fatal(err)
	}
	got := Translate(st.Err())
	var merr *Error
	if !errors.As(got, &merr) {
		t.Fatalf("not an *Error: %T", got)
	}
	if merr.Code != codes.Unavailable || merr.Reason != "WRONG_NODE" || merr.Metadata["leader"] != "127.0.0.1:7118" ||
		merr.RetryAfter != 250*time.Millisecond || merr.FieldViolations["name"] != "bad" || merr.Message != "standby" {
		t.Fatalf("details lost: %+v", merr)
	}
	if !errors.Is(got, ErrUnavailable) || errors.Is(got, ErrNotFound) {
		t.Fatal("errors.Is must match by code")
	}
	if Translate(nil) != nil {
		t.Fatal("nil must stay nil")
	}
}

func TestCodeNamesRoundTrip(t *testing.T) {
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		if got := errorFromName(CodeName(c), "m").Code; got != c {
			t.Fatalf("%v -> %q -> %v", c, CodeName(c), got)
		}
	}
	if errorFromName("NO_SUCH", "m").Code != codes.Unknown {
		t.Fatal("unknown names are UNKNOWN")
	}
}
