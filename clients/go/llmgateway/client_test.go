package llmgateway_test

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/llmgateway/llmgateway/clients/go/llmgateway"
	pb "github.com/llmgateway/llmgateway/clients/go/llmgatewayv1"
)

// fakeGateway is an in-process GatewayService on 127.0.0.1 for client behaviour that
// needs no real gateway: the bearer key, retries of UNAVAILABLE, default deadlines,
// and streams that break the contract.
type fakeGateway struct {
	pb.UnimplementedGatewayServiceServer
	failures   atomic.Int32 // Complete fails with UNAVAILABLE this many times first
	calls      atomic.Int32
	lastAuth   atomic.Value
	deadlineIn atomic.Int64
	events     []*pb.StreamCompleteResponse
}

func (f *fakeGateway) Complete(ctx context.Context, req *pb.CompleteRequest) (*pb.CompleteResponse, error) {
	f.calls.Add(1)
	md, _ := metadata.FromIncomingContext(ctx)
	f.lastAuth.Store(md.Get("authorization"))
	if d, ok := ctx.Deadline(); ok {
		f.deadlineIn.Store(int64(time.Until(d)))
	}
	if f.failures.Load() > 0 {
		f.failures.Add(-1)
		return nil, status.Error(codes.Unavailable, "try again")
	}
	return &pb.CompleteResponse{Completion: &pb.Completion{Content: "echo: " + req.GetMessages()[0].GetContent()}}, nil
}

func (f *fakeGateway) StreamComplete(_ *pb.StreamCompleteRequest, stream grpc.ServerStreamingServer[pb.StreamCompleteResponse]) error {
	for _, ev := range f.events {
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeGateway) ListModels(context.Context, *pb.ListModelsRequest) (*pb.ListModelsResponse, error) {
	return &pb.ListModelsResponse{Models: []*pb.Model{{Name: "default", ContextWindowTokenCount: 100,
		Targets: []*pb.Target{{Provider: "mock", Price: &pb.Price{InputNanoUsdPerMillionTokens: 5}}}}}}, nil
}

func (f *fakeGateway) CountTokens(context.Context, *pb.CountTokensRequest) (*pb.CountTokensResponse, error) {
	return &pb.CountTokensResponse{InputTokenCount: 7, ContextWindowTokenCount: 100, Exact: true}, nil
}

func serveFake(t *testing.T, f *fakeGateway) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pb.RegisterGatewayServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func newClient(t *testing.T, addr string, opts ...llmgateway.Option) *llmgateway.Client {
	t.Helper()
	c, err := llmgateway.New(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestBearerKeyOnInsecureChannelAndDefaultDeadline(t *testing.T) {
	f := &fakeGateway{}
	c := newClient(t, serveFake(t, f), llmgateway.WithAPIKey("lgw-abc"), llmgateway.WithTimeout(5*time.Second))
	got, err := c.Complete(context.Background(), llmgateway.Prompt("default", "hi"))
	if err != nil {
		t.Fatal(err)
	}
	if got.Content != "echo: hi" {
		t.Fatalf("content %q", got.Content)
	}
	if auth, _ := f.lastAuth.Load().([]string); len(auth) != 1 || auth[0] != "Bearer lgw-abc" {
		t.Fatalf("authorization %v", auth)
	}
	if d := time.Duration(f.deadlineIn.Load()); d <= 0 || d > 5*time.Second {
		t.Fatalf("deadline in %v, want the 5s default", d)
	}
	// A context deadline wins over the default.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := c.Complete(ctx, llmgateway.Prompt("default", "hi")); err != nil {
		t.Fatal(err)
	}
	if d := time.Duration(f.deadlineIn.Load()); d > time.Second {
		t.Fatalf("deadline in %v, want at most the context's 1s", d)
	}
}

func TestNoKeyNoAuthorization(t *testing.T) {
	f := &fakeGateway{}
	c := newClient(t, serveFake(t, f))
	if _, err := c.Complete(context.Background(), llmgateway.Prompt("default", "hi")); err != nil {
		t.Fatal(err)
	}
	if auth, _ := f.lastAuth.Load().([]string); len(auth) != 0 {
		t.Fatalf("authorization %v, want none", auth)
	}
	if _, err := llmgateway.New("127.0.0.1:1", llmgateway.WithAPIKey("bad key")); err == nil {
		t.Fatal("a key with a space must be refused")
	}
}

func TestRetriesUnavailable(t *testing.T) {
	f := &fakeGateway{}
	f.failures.Store(2)
	c := newClient(t, serveFake(t, f))
	if _, err := c.Complete(context.Background(), llmgateway.Prompt("default", "hi")); err != nil {
		t.Fatalf("want success on the third attempt: %v", err)
	}
	if n := f.calls.Load(); n != 3 {
		t.Fatalf("%d calls, want 3", n)
	}

	// Three attempts in all, then the typed error.
	f.calls.Store(0)
	f.failures.Store(5)
	_, err := c.Complete(context.Background(), llmgateway.Prompt("default", "hi"))
	var un *llmgateway.UnavailableError
	if !errors.As(err, &un) || f.calls.Load() != 3 {
		t.Fatalf("got %T %v after %d calls", err, err, f.calls.Load())
	}

	// Off with WithRetryUnavailable(false).
	f.calls.Store(0)
	f.failures.Store(1)
	c2 := newClient(t, c.Target(), llmgateway.WithRetryUnavailable(false))
	if _, err := c2.Complete(context.Background(), llmgateway.Prompt("default", "hi")); !errors.As(err, &un) || f.calls.Load() != 1 {
		t.Fatalf("got %v after %d calls", err, f.calls.Load())
	}
}

func TestConnectionRefusedIsUnavailable(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	c := newClient(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = c.Complete(ctx, llmgateway.Prompt("default", "hi"))
	var un *llmgateway.UnavailableError
	if !errors.As(err, &un) || un.Reason != "" {
		t.Fatalf("got %T %v", err, err)
	}
}

func TestStreamContract(t *testing.T) {
	delta := func(s string) *pb.StreamCompleteResponse {
		return &pb.StreamCompleteResponse{Event: &pb.StreamCompleteResponse_Delta{Delta: &pb.Delta{Text: s}}}
	}
	result := &pb.StreamCompleteResponse{Event: &pb.StreamCompleteResponse_Result{Result: &pb.Completion{Content: "ab",
		Usage: &pb.Usage{InputTokenCount: 1, OutputTokenCount: 2}, Cost: &pb.Cost{TotalNanoUsd: 1500}}}}

	f := &fakeGateway{events: []*pb.StreamCompleteResponse{delta("a"), delta(""), delta("b"), result}}
	c := newClient(t, serveFake(t, f))
	stream, err := c.Stream(context.Background(), llmgateway.Prompt("default", "hi"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for stream.Next() {
		got = append(got, stream.Delta())
	}
	if stream.Err() != nil || stream.Result() == nil || len(got) != 2 || stream.Text() != "ab" {
		t.Fatalf("deltas %v, err %v, result %v", got, stream.Err(), stream.Result())
	}
	if r := stream.Result(); r.Content != "ab" || r.Usage.OutputTokens != 2 || r.Cost.USD() != "0.000001500" {
		t.Fatalf("result %+v", r)
	}
	if stream.Next() {
		t.Fatal("Next after the end")
	}

	for name, events := range map[string][]*pb.StreamCompleteResponse{
		"no result":            {delta("a")},
		"event after a result": {delta("a"), result, delta("b")},
	} {
		f := &fakeGateway{events: events}
		c := newClient(t, serveFake(t, f))
		stream, err := c.Stream(context.Background(), llmgateway.Prompt("default", "hi"))
		if err != nil {
			t.Fatal(err)
		}
		_, err = stream.Collect()
		var pe *llmgateway.ProtocolError
		if !errors.As(err, &pe) || stream.Result() != nil {
			t.Errorf("%s: got %T %v", name, err, err)
		}
	}
}

func TestCountTokensAndListModels(t *testing.T) {
	c := newClient(t, serveFake(t, &fakeGateway{}))
	count, err := c.CountTokens(context.Background(), llmgateway.Prompt("default", "hi"))
	if err != nil || count.InputTokens != 7 || count.ContextWindow != 100 || !count.Exact {
		t.Fatalf("%+v %v", count, err)
	}
	models, err := c.ListModels(context.Background())
	if err != nil || len(models) != 1 || models[0].Name != "default" || models[0].Targets[0].Price.InputNanoUSDPerMillion != 5 {
		t.Fatalf("%+v %v", models, err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal("Close must be idempotent:", err)
	}
}

func TestCountTokensAndListModelsOnGateway(t *testing.T) {
	h := startHarness(t)
	c := newClient(t, h.Gateway, llmgateway.WithAPIKey(h.APIKey))
	count, err := c.CountTokens(context.Background(), llmgateway.Prompt("tiny", "Hello there"))
	if err != nil || count.InputTokens <= 0 || count.ContextWindow != 64 {
		t.Fatalf("%+v %v", count, err)
	}
	models, err := c.ListModels(context.Background())
	if err != nil || len(models) == 0 {
		t.Fatalf("%+v %v", models, err)
	}
	names := map[string]bool{}
	for _, m := range models {
		names[m.Name] = true
	}
	if !names["ok"] || !names["tiny"] {
		t.Fatalf("routes %v", names)
	}
}
