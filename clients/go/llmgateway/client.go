// Package llmgateway is the Go client of the llmgateway gRPC service
// (protos/llmgateway/v1/gateway.proto).
//
//	client, err := llmgateway.New("127.0.0.1:50051", llmgateway.WithAPIKey(key))
//	if err != nil { ... }
//	defer client.Close()
//	completion, err := client.Complete(ctx, llmgateway.Prompt("default", "Hello"))
//
// Every call takes its deadline from ctx, or the client's default timeout (60 s unless
// WithTimeout says otherwise) when ctx has none. Calls that fail with UNAVAILABLE are
// retried by gRPC itself (service config retryPolicy: 3 attempts in all, backoff
// 0.2 s to 2 s) inside that deadline. Errors are the typed errors of errors.go.
package llmgateway

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	pb "github.com/llmgateway/llmgateway/clients/go/llmgatewayv1"
)

// Version is this client's version, sent in the user agent.
const Version = "0.1.0"

const (
	// DefaultTarget is the address `make run` serves on.
	DefaultTarget = "127.0.0.1:50051"
	// DefaultTimeout is the deadline of a call whose context has none.
	DefaultTimeout = 60 * time.Second
	// DefaultMaxMessageBytes is the largest message sent or received.
	DefaultMaxMessageBytes = 16 * 1024 * 1024
	// ServiceName is the gateway's gRPC service.
	ServiceName = "llmgateway.v1.GatewayService"
)

// RetryPolicy is the gRPC retryPolicy for UNAVAILABLE, the same as the Python client's.
var RetryPolicy = map[string]any{
	"maxAttempts":          3,
	"initialBackoff":       "0.2s",
	"maxBackoff":           "2s",
	"backoffMultiplier":    2,
	"retryableStatusCodes": []string{"UNAVAILABLE"},
}

// ServiceConfig is the gRPC service config JSON of the gateway service: the
// RetryPolicy when retryUnavailable, else none.
func ServiceConfig(retryUnavailable bool) string {
	method := map[string]any{"name": []map[string]string{{"service": ServiceName}}}
	if retryUnavailable {
		method["retryPolicy"] = RetryPolicy
	}
	out, err := json.Marshal(map[string]any{"methodConfig": []any{method}})
	if err != nil {
		panic(err) // static data
	}
	return string(out)
}

type options struct {
	apiKey           string
	timeout          time.Duration
	creds            credentials.TransportCredentials
	retryUnavailable bool
	maxMessageBytes  int
	dialOptions      []grpc.DialOption
}

// Option configures New.
type Option func(*options)

// WithAPIKey sends `authorization: Bearer <key>` with every call. It works on a
// plaintext (insecure) channel too, as well as over TLS.
func WithAPIKey(key string) Option { return func(o *options) { o.apiKey = key } }

// WithTimeout sets the deadline of calls whose context has none (DefaultTimeout when
// not given). 0 means no default deadline.
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithTLS connects over TLS with this configuration (nil: the system roots).
func WithTLS(cfg *tls.Config) Option {
	return func(o *options) {
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		o.creds = credentials.NewTLS(cfg)
	}
}

// WithTransportCredentials connects with these transport credentials.
func WithTransportCredentials(creds credentials.TransportCredentials) Option {
	return func(o *options) { o.creds = creds }
}

// WithInsecure connects in plaintext (the default).
func WithInsecure() Option { return func(o *options) { o.creds = insecure.NewCredentials() } }

// WithRetryUnavailable turns gRPC's retries of UNAVAILABLE on (the default) or off.
func WithRetryUnavailable(retry bool) Option {
	return func(o *options) { o.retryUnavailable = retry }
}

// WithMaxMessageBytes sets the largest message sent or received.
func WithMaxMessageBytes(n int) Option { return func(o *options) { o.maxMessageBytes = n } }

// WithDialOptions adds gRPC dial options, applied after the client's own.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOptions = append(o.dialOptions, opts...) }
}

// bearer is the per-RPC credential of WithAPIKey.
type bearer struct{ header string }

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": b.header}, nil
}

// RequireTransportSecurity is false so that the key is sent on a local plaintext
// channel too (e.g. `make run`); use WithTLS for a gateway on another host.
func (bearer) RequireTransportSecurity() bool { return false }

// Client is a client of the gateway. It is safe for concurrent use; Close it when done.
type Client struct {
	target  string
	conn    *grpc.ClientConn
	stub    pb.GatewayServiceClient
	timeout time.Duration

	closeOnce sync.Once
	closeErr  error
}

// New builds a client of the gateway at target ("host:port" or any gRPC target).
// The connection is made lazily, on the first call.
func New(target string, opts ...Option) (*Client, error) {
	o := options{timeout: DefaultTimeout, retryUnavailable: true, maxMessageBytes: DefaultMaxMessageBytes}
	for _, opt := range opts {
		opt(&o)
	}
	if o.timeout < 0 {
		return nil, errors.New("llmgateway: the timeout must not be negative")
	}
	if o.maxMessageBytes <= 0 {
		return nil, errors.New("llmgateway: the max message size must be positive")
	}
	if o.creds == nil {
		o.creds = insecure.NewCredentials()
	}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(o.creds),
		grpc.WithUserAgent("llmgateway-client-go/" + Version),
		grpc.WithDefaultServiceConfig(ServiceConfig(o.retryUnavailable)),
		// Ping while calls are in flight (a long generation that sends nothing) so a
		// dead peer is noticed; never when idle, which servers would punish.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 60 * time.Second, Timeout: 20 * time.Second}),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(o.maxMessageBytes),
			grpc.MaxCallSendMsgSize(o.maxMessageBytes),
		),
	}
	if !o.retryUnavailable {
		dial = append(dial, grpc.WithDisableRetry())
	}
	if o.apiKey != "" {
		if err := checkKey(o.apiKey); err != nil {
			return nil, err
		}
		dial = append(dial, grpc.WithPerRPCCredentials(bearer{header: "Bearer " + o.apiKey}))
	}
	dial = append(dial, o.dialOptions...)
	conn, err := grpc.NewClient(target, dial...)
	if err != nil {
		return nil, fmt.Errorf("llmgateway: %w", err)
	}
	return &Client{target: target, conn: conn, stub: pb.NewGatewayServiceClient(conn), timeout: o.timeout}, nil
}

func checkKey(key string) error {
	for i := 0; i < len(key); i++ {
		if key[i] < 0x21 || key[i] > 0x7e {
			return errors.New("llmgateway: the API key must be printable ASCII without spaces")
		}
	}
	return nil
}

// Target is the gateway's address.
func (c *Client) Target() string { return c.target }

// Conn is the underlying gRPC connection (e.g. for the generated AdminService client).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Close closes the connection, cancelling calls in flight. Idempotent.
func (c *Client) Close() error {
	c.closeOnce.Do(func() { c.closeErr = c.conn.Close() })
	return c.closeErr
}

// withDeadline gives ctx the client's default deadline when it has none.
func (c *Client) withDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx == nil {
		ctx = context.Background()
	}
	if _, ok := ctx.Deadline(); ok || c.timeout == 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.timeout)
}

// Complete runs one chat completion and returns the whole answer.
func (c *Client) Complete(ctx context.Context, req *Request) (*Completion, error) {
	if req == nil {
		return nil, errors.New("llmgateway: nil request")
	}
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	resp, err := c.stub.Complete(ctx, req.completeProto())
	if err != nil {
		return nil, FromError(ctx, err)
	}
	if resp.GetCompletion() == nil {
		return nil, newProtocolError("the gateway's Complete response has no completion")
	}
	return completionFromProto(resp.GetCompletion()), nil
}

// Stream runs one chat completion, streamed. Read it with Next/Delta until Next
// returns false, then Result (or Err). Cancelling ctx, or Close, cancels the call;
// ctx's deadline (or the client's default timeout) bounds the whole stream.
//
//	stream, err := client.Stream(ctx, llmgateway.Prompt("default", "Hello"))
//	if err != nil { ... }
//	defer stream.Close()
//	for stream.Next() {
//		fmt.Print(stream.Delta())
//	}
//	if err := stream.Err(); err != nil { ... }
//	completion := stream.Result()
func (c *Client) Stream(ctx context.Context, req *Request) (*Stream, error) {
	if req == nil {
		return nil, errors.New("llmgateway: nil request")
	}
	ctx, cancel := c.withDeadline(ctx)
	call, err := c.stub.StreamComplete(ctx, req.streamProto())
	if err != nil {
		cancel()
		return nil, FromError(ctx, err)
	}
	return &Stream{ctx: ctx, cancel: cancel, call: call}, nil
}

// CountTokens says how many input tokens a request's messages use on its route, and
// the route's context window, without calling any provider.
func (c *Client) CountTokens(ctx context.Context, req *Request) (*TokenCount, error) {
	if req == nil {
		return nil, errors.New("llmgateway: nil request")
	}
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	resp, err := c.stub.CountTokens(ctx, &pb.CountTokensRequest{Model: req.Model, Messages: messagesProto(req.Messages)})
	if err != nil {
		return nil, FromError(ctx, err)
	}
	return &TokenCount{
		InputTokens:   resp.GetInputTokenCount(),
		ContextWindow: resp.GetContextWindowTokenCount(),
		Exact:         resp.GetExact(),
	}, nil
}

// ListModels lists the routes the caller may use, sorted by name.
func (c *Client) ListModels(ctx context.Context) ([]Model, error) {
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	resp, err := c.stub.ListModels(ctx, &pb.ListModelsRequest{})
	if err != nil {
		return nil, FromError(ctx, err)
	}
	return modelsFromProto(resp), nil
}

// Stream is a streamed completion: Next/Delta for the text deltas, then Result.
// It is not safe for concurrent use.
type Stream struct {
	ctx    context.Context
	cancel context.CancelFunc
	call   grpc.ServerStreamingClient[pb.StreamCompleteResponse]

	delta   string
	pending *pb.Completion
	result  *Completion
	err     error
	done    bool
	text    []byte
}

// Next waits for the next non-empty text delta and reports whether there is one. It
// returns false once the stream has ended: then Result is the completion, or Err says
// why the stream failed.
func (s *Stream) Next() bool {
	if s.done {
		return false
	}
	for {
		event, err := s.call.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				if s.pending == nil {
					s.finish(newProtocolError("the stream ended without a result"))
				} else {
					s.result = completionFromProto(s.pending)
					s.finish(nil)
				}
			} else {
				s.finish(FromError(s.ctx, err))
			}
			return false
		}
		if s.pending != nil {
			s.finish(newProtocolError("the stream sent an event after its result"))
			return false
		}
		switch ev := event.GetEvent().(type) {
		case *pb.StreamCompleteResponse_Delta:
			if text := ev.Delta.GetText(); text != "" {
				s.delta = text
				s.text = append(s.text, text...)
				return true
			}
		case *pb.StreamCompleteResponse_Result:
			// Kept until the stream ends, so that a failing status still wins.
			s.pending = ev.Result
			if s.pending == nil {
				s.pending = &pb.Completion{}
			}
		}
	}
}

func (s *Stream) finish(err error) {
	s.done = true
	s.delta = ""
	s.err = err
	s.cancel()
}

// Delta is the text delta Next found.
func (s *Stream) Delta() string { return s.delta }

// Text is the text received so far.
func (s *Stream) Text() string { return string(s.text) }

// Result is the completion once the stream ended successfully, else nil.
func (s *Stream) Result() *Completion { return s.result }

// Err is the typed error the stream failed with, nil while it runs or when it succeeded.
func (s *Stream) Err() error { return s.err }

// Collect reads the rest of the stream and returns its completion.
func (s *Stream) Collect() (*Completion, error) {
	for s.Next() {
		// Drain the deltas; Text keeps them.
	}
	if s.err != nil {
		return nil, s.err
	}
	if s.result == nil {
		return nil, errors.New("llmgateway: the stream was closed before its result")
	}
	return s.result, nil
}

// Close stops the stream, cancelling the call if it is still running. Idempotent.
func (s *Stream) Close() {
	if !s.done {
		s.done = true
		s.delta = ""
	}
	s.cancel()
}
