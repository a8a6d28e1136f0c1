// BidStream: bids over one SubmitBids stream that follows the leader, each acked once durable.

package mabeam

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	v1 "github.com/mabeam/mabeam/clients/go/gen/mabeamv1"
	"google.golang.org/grpc/codes"
)

type bidKey struct{ id, clientEventID string }

type pendingBid struct {
	req  *v1.SubmitEventRequest
	done chan struct{}
	resp *v1.SubmitEventResponse
	err  error
}

// BidStream submits bids over one SubmitBids stream that follows the leader: when the stream ends
// with UNAVAILABLE (WRONG_NODE, NOT_DURABLE, a killed coordinator) it reopens on the leader and
// resends every unacknowledged bid with the same client_event_id, which the coordinator answers
// once. Submit is safe from many goroutines; bids queued together go out in one message.
type BidStream struct {
	c       *CoordinatorClient
	mu      sync.Mutex
	pending map[bidKey]*pendingBid
	outbox  []*v1.SubmitEventRequest
	wake    chan struct{}
	running bool
	closed  bool
	// Reconnects counts how often the stream was reopened.
	Reconnects int
}

// BidStream opens a bid stream (lazily, on the first Submit).
func (c *CoordinatorClient) BidStream() *BidStream {
	return &BidStream{c: c, pending: map[bidKey]*pendingBid{}, wake: make(chan struct{}, 1)}
}

// Submit submits one bid and waits until it is durable (or refused, as an *Error); cancelling
// ctx stops the wait, not the bid.
func (b *BidStream) Submit(ctx context.Context, id string, event any, clientEventID string) (*v1.SubmitEventResponse, error) {
	eventJSON, err := jsonText(event)
	if err != nil {
		return nil, err
	}
	if clientEventID == "" {
		clientEventID = newID()
	}
	key := bidKey{id, clientEventID}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, &Error{Code: codes.FailedPrecondition, Message: "the bid stream is closed"}
	}
	p, ok := b.pending[key]
	if !ok {
		p = &pendingBid{req: &v1.SubmitEventRequest{Id: id, EventJson: eventJSON, ClientEventId: clientEventID}, done: make(chan struct{})}
		b.pending[key] = p
		b.outbox = append(b.outbox, p.req)
	}
	if !b.running {
		b.running = true
		go b.run()
	}
	b.mu.Unlock()
	b.poke()
	select {
	case <-p.done:
		return p.resp, p.err
	case <-ctx.Done():
		return nil, Translate(ctx.Err())
	}
}

func (b *BidStream) poke() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// Close waits for every submitted bid's answer and ends the stream.
func (b *BidStream) Close() {
	b.mu.Lock()
	b.closed = true
	waits := make([]chan struct{}, 0, len(b.pending))
	for _, p := range b.pending {
		waits = append(waits, p.done)
	}
	b.mu.Unlock()
	for _, w := range waits {
		<-w
	}
	b.poke()
}

func (b *BidStream) answer(ack *v1.BidAck) {
	b.mu.Lock()
	p, ok := b.pending[bidKey{ack.GetId(), ack.GetClientEventId()}]
	if ok {
		delete(b.pending, bidKey{ack.GetId(), ack.GetClientEventId()})
	}
	b.mu.Unlock()
	if !ok {
		return
	}
	if e := ack.GetError(); e != nil {
		p.err = &Error{Code: codes.Code(e.GetCode()), Message: e.GetMessage(), Reason: e.GetReason()}
	} else {
		p.resp = ack.GetResult()
	}
	close(p.done)
}

func (b *BidStream) failAll(err error) {
	b.mu.Lock()
	pending := b.pending
	b.pending = map[bidKey]*pendingBid{}
	b.outbox = nil
	b.running = false
	b.mu.Unlock()
	for _, p := range pending {
		p.err = err
		close(p.done)
	}
}

const maxBidBatch = 256

func (b *BidStream) run() {
	var deadline time.Time
	for {
		b.mu.Lock()
		if len(b.pending) == 0 {
			b.running = false
			b.mu.Unlock()
			return
		}
		b.outbox = b.outbox[:0]
		for _, p := range b.pending { // every unacknowledged bid, with its id, on the new stream
			b.outbox = append(b.outbox, p.req)
		}
		b.mu.Unlock()
		stub, endpoint, err := b.c.stub()
		if err == nil {
			err = b.once(stub, &deadline)
			if err == nil {
				continue
			}
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(b.c.FailoverTimeout)
		}
		wait, fatal := b.c.failedOver(err, endpoint, deadline)
		if fatal != nil {
			b.failAll(fatal)
			return
		}
		b.mu.Lock()
		b.Reconnects++
		b.mu.Unlock()
		time.Sleep(wait)
	}
}

// once runs one stream until it ends; nil when it ended with nothing pending.
func (b *BidStream) once(stub v1.CoordinatorServiceClient, deadline *time.Time) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := stub.SubmitBids(ctx)
	if err != nil {
		return err
	}
	go func() {
		for {
			b.mu.Lock()
			if ctx.Err() != nil { // this stream is over; the next one resends from pending
				b.mu.Unlock()
				return
			}
			n := min(len(b.outbox), maxBidBatch)
			batch := append([]*v1.SubmitEventRequest(nil), b.outbox[:n]...)
			b.outbox = b.outbox[n:]
			done := b.closed && len(b.pending) == 0
			b.mu.Unlock()
			if done {
				_ = s.CloseSend()
				return
			}
			if len(batch) > 0 {
				if s.Send(&v1.SubmitBidsRequest{Bids: batch}) != nil {
					return // the stream ended: Recv sees why
				}
				continue
			}
			select {
			case <-b.wake:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		resp, err := s.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				b.mu.Lock()
				empty := len(b.pending) == 0
				b.mu.Unlock()
				if empty {
					return nil
				}
				return &Error{Code: codes.Unavailable, Message: "the bid stream ended with bids unanswered"}
			}
			return err
		}
		*deadline = time.Time{}
		for _, ack := range resp.GetAcks() {
			b.answer(ack)
		}
		b.mu.Lock()
		if len(b.pending) == 0 && b.closed {
			b.mu.Unlock()
			b.poke()
		} else {
			b.mu.Unlock()
		}
	}
}
