// Package mabeam is the Go SDK for mabeam: MeshService (membership, leaders, names, groups and the
// data plane), AgentService (agentd), CoordinatorService (auctions, negotiation, votes, markets,
// variables, ledger), RunService (durable runs, streamed with resume) and external agents (an agent
// on the mesh written in Go).
//
// Every call takes a context.Context: its deadline becomes the gRPC deadline and cancelling it
// cancels the call. Every failed call returns an *Error carrying the gRPC code, the server's
// message and the rich details (ErrorInfo reason and metadata, RetryInfo, BadRequest), usable
// with errors.As, and with errors.Is against ErrNotFound, ErrAlreadyExists, ...
package mabeam

import (
	"errors"
	"fmt"
	"time"

	v1 "github.com/mabeam/mabeam/clients/go/gen/mabeamv1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is every failure a mabeam call returns: the status code, the server's message and the
// google.rpc details it attached.
type Error struct {
	// Code is the gRPC status code.
	Code codes.Code
	// Message is the server's message, written for a person.
	Message string
	// Reason is the mabeam.v1.ErrorReason name from ErrorInfo ("NAME_TAKEN", "WRONG_NODE", ...).
	Reason string
	// Metadata is ErrorInfo's metadata (e.g. "leader" on a WRONG_NODE answer from a standby).
	Metadata map[string]string
	// FieldViolations maps each bad field to what is wrong with it (BadRequest).
	FieldViolations map[string]string
	// RetryAfter is the server's suggested delay before a retry (RetryInfo); 0 when absent.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("%s (%s): %s", e.Code, e.Reason, e.Message)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

// Is matches the sentinel errors by code (ErrNotFound, ...) and, for a sentinel that names a reason
// (ErrApprovalDecided, ...), by code and reason: errors.Is(err, mabeam.ErrApprovalDecided) works.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Message == "" && t.Code == e.Code && (t.Reason == "" || t.Reason == e.Reason)
}

// ErrorReason is the reason as the contract's enum (v1.ErrorReason_ERROR_REASON_UNSPECIFIED when the
// server gave none or one this SDK does not know).
func (e *Error) ErrorReason() v1.ErrorReason {
	return v1.ErrorReason(v1.ErrorReason_value[e.Reason])
}

// GRPCStatus lets grpc's status.FromError see the original code.
func (e *Error) GRPCStatus() *status.Status { return status.New(e.Code, e.Message) }

// Sentinels for errors.Is; use errors.As with *Error for the details.
var (
	ErrInvalidArgument    = &Error{Code: codes.InvalidArgument}
	ErrNotFound           = &Error{Code: codes.NotFound}
	ErrAlreadyExists      = &Error{Code: codes.AlreadyExists}
	ErrFailedPrecondition = &Error{Code: codes.FailedPrecondition}
	ErrResourceExhausted  = &Error{Code: codes.ResourceExhausted}
	ErrUnavailable        = &Error{Code: codes.Unavailable}
	ErrDeadlineExceeded   = &Error{Code: codes.DeadlineExceeded}
	ErrAborted            = &Error{Code: codes.Aborted}
	ErrPermissionDenied   = &Error{Code: codes.PermissionDenied}
	ErrUnimplemented      = &Error{Code: codes.Unimplemented}
	ErrCanceled           = &Error{Code: codes.Canceled}

	// Tool approvals (RunClient.Approve/Deny): the run never asked about that call; it was already
	// decided the other way; its deadline passed first. ErrRunTerminal: the run has ended.
	ErrApprovalNotFound = &Error{Code: codes.NotFound, Reason: "APPROVAL_NOT_FOUND"}
	ErrApprovalDecided  = &Error{Code: codes.FailedPrecondition, Reason: "APPROVAL_DECIDED"}
	ErrApprovalExpired  = &Error{Code: codes.FailedPrecondition, Reason: "APPROVAL_EXPIRED"}
	ErrRunTerminal      = &Error{Code: codes.FailedPrecondition, Reason: "RUN_TERMINAL"}
)

// Translate turns a gRPC error into an *Error with its rich details (nil stays nil; an *Error is
// returned as is). It is the one place the SDK decodes google.rpc details.
func Translate(err error) error {
	if err == nil {
		return nil
	}
	var own *Error
	if errors.As(err, &own) {
		return own
	}
	st, ok := status.FromError(err)
	if !ok {
		return &Error{Code: codes.Unknown, Message: err.Error()}
	}
	out := &Error{Code: st.Code(), Message: st.Message()}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			out.Reason = d.GetReason()
			out.Metadata = d.GetMetadata()
		case *errdetails.BadRequest:
			out.FieldViolations = map[string]string{}
			for _, v := range d.GetFieldViolations() {
				out.FieldViolations[v.GetField()] = v.GetDescription()
			}
		case *errdetails.RetryInfo:
			out.RetryAfter = d.GetRetryDelay().AsDuration()
		}
	}
	return out
}

// codeNames are the upper-case gRPC names agentd's payload convention carries ("NOT_FOUND"), by code.
var codeNames = []string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
	"OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

// CodeName is the upper-case gRPC name of a code ("NOT_FOUND"), as agentd's payloads carry it.
func CodeName(c codes.Code) string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "UNKNOWN"
}

func errorFromName(name, message string) *Error {
	for i, n := range codeNames {
		if n == name {
			return &Error{Code: codes.Code(i), Message: message}
		}
	}
	return &Error{Code: codes.Unknown, Message: message}
}
