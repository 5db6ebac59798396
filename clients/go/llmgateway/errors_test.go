package llmgateway_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/llmgateway/llmgateway/clients/go/llmgateway"
)

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func info(reason string, md map[string]string) *errdetails.ErrorInfo {
	return &errdetails.ErrorInfo{Reason: reason, Domain: "llmgateway", Metadata: md}
}

func statusErr(t *testing.T, code codes.Code, msg string, details ...proto.Message) error {
	t.Helper()
	p := &spb.Status{Code: int32(code), Message: msg}
	for _, d := range details {
		p.Details = append(p.Details, mustAny(t, d))
	}
	return status.FromProto(p).Err()
}

func decode(err error) error { return llmgateway.FromError(context.Background(), err) }

func TestDecodeModelNotFound(t *testing.T) {
	err := decode(statusErr(t, codes.NotFound, "no route", info("MODEL_NOT_FOUND", map[string]string{"model": "x"})))
	var nf *llmgateway.ModelNotFoundError
	if !errors.As(err, &nf) {
		t.Fatalf("got %T %v", err, err)
	}
	if nf.Model != "x" || nf.Reason != "MODEL_NOT_FOUND" || nf.Code != codes.NotFound || nf.Domain != "llmgateway" {
		t.Fatalf("bad fields: %+v", nf.GatewayError)
	}
	var gw *llmgateway.GatewayError
	if !errors.As(err, &gw) || gw.Message != "no route" {
		t.Fatalf("not a GatewayError: %v", err)
	}
	if status.Code(err) != codes.NotFound {
		t.Fatalf("status.Code = %v", status.Code(err))
	}
	if got := err.Error(); got != "llmgateway: MODEL_NOT_FOUND: no route" {
		t.Fatalf("Error() = %q", got)
	}
}

func TestDecodeContextWindowIsInvalidRequest(t *testing.T) {
	err := decode(statusErr(t, codes.InvalidArgument, "too long", info("CONTEXT_WINDOW_EXCEEDED", map[string]string{
		"input_token_count": "90", "max_tokens": "16", "context_window_token_count": "64",
	})))
	var cw *llmgateway.ContextWindowExceededError
	if !errors.As(err, &cw) {
		t.Fatalf("got %T", err)
	}
	if cw.InputTokens != 90 || cw.MaxTokens != 16 || cw.ContextWindow != 64 {
		t.Fatalf("ints: %+v", cw)
	}
	var ir *llmgateway.InvalidRequestError
	if !errors.As(err, &ir) {
		t.Fatal("a ContextWindowExceededError must also be an InvalidRequestError")
	}
}

func TestDecodeInvalidRequestFieldViolations(t *testing.T) {
	err := decode(statusErr(t, codes.InvalidArgument, "bad", info("INVALID_REQUEST", nil),
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "temperature", Description: "in [0, 2]"}}}))
	var ir *llmgateway.InvalidRequestError
	if !errors.As(err, &ir) {
		t.Fatalf("got %T", err)
	}
	if len(ir.FieldViolations) != 1 || ir.FieldViolations[0].Field != "temperature" {
		t.Fatalf("violations: %+v", ir.FieldViolations)
	}
	var cw *llmgateway.ContextWindowExceededError
	if errors.As(err, &cw) {
		t.Fatal("an InvalidRequestError is not a ContextWindowExceededError")
	}
}

func TestDecodeQuotaAndRetry(t *testing.T) {
	quota := &errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{Subject: "tenant:a", Description: "spent"}}}
	retry := &errdetails.RetryInfo{RetryDelay: durationpb.New(3 * time.Second)}
	cases := []struct {
		reason string
		target func(error) bool
	}{
		{"BUDGET_EXCEEDED", func(e error) bool { var x *llmgateway.BudgetExceededError; return errors.As(e, &x) }},
		{"RATE_LIMITED", func(e error) bool { var x *llmgateway.RateLimitedError; return errors.As(e, &x) }},
		{"COST_LIMIT_EXCEEDED", func(e error) bool { var x *llmgateway.CostLimitExceededError; return errors.As(e, &x) }},
		{"SOMETHING_NEW", func(e error) bool { var x *llmgateway.ResourceExhaustedError; return errors.As(e, &x) }},
	}
	for _, c := range cases {
		err := decode(statusErr(t, codes.ResourceExhausted, "limit", info(c.reason, map[string]string{"limit_nano_usd": "5"}), quota, retry))
		if !c.target(err) {
			t.Errorf("%s: got %T", c.reason, err)
		}
		var re *llmgateway.ResourceExhaustedError
		if !errors.As(err, &re) {
			t.Errorf("%s: not a ResourceExhaustedError", c.reason)
			continue
		}
		if re.RetryDelay != 3*time.Second || len(re.QuotaViolations) != 1 || re.QuotaViolations[0].Subject != "tenant:a" {
			t.Errorf("%s: fields %+v", c.reason, re.GatewayError)
		}
	}
	var cl *llmgateway.CostLimitExceededError
	if err := decode(statusErr(t, codes.ResourceExhausted, "x", info("COST_LIMIT_EXCEEDED", map[string]string{"limit_nano_usd": "5", "estimated_nano_usd": "9"}))); !errors.As(err, &cl) || cl.LimitNanoUSD != 5 || cl.EstimatedNanoUSD != 9 {
		t.Errorf("cost limit: %v %+v", err, cl)
	}
}

func TestDecodeUnavailableAttempts(t *testing.T) {
	err := decode(statusErr(t, codes.Unavailable, "all down",
		info("UPSTREAM_UNAVAILABLE", map[string]string{"attempt_count": "2", "attempt_10": "b/m:TIMEOUT", "attempt_2": "a/m:TRANSIENT"}),
		&errdetails.RetryInfo{RetryDelay: durationpb.New(7 * time.Second)}))
	var un *llmgateway.UnavailableError
	if !errors.As(err, &un) {
		t.Fatalf("got %T", err)
	}
	if un.RetryDelay != 7*time.Second || len(un.Attempts) != 2 || un.Attempts[0] != "a/m:TRANSIENT" || un.Attempts[1] != "b/m:TIMEOUT" {
		t.Fatalf("fields: %v %v", un.RetryDelay, un.Attempts)
	}
}

func TestDecodeUnknownDetailType(t *testing.T) {
	unknown := &anypb.Any{TypeUrl: "type.googleapis.com/conformance.NoClientKnowsThis", Value: []byte{0x08, 0x01}}
	garbage := &anypb.Any{TypeUrl: "type.googleapis.com/google.rpc.RetryInfo", Value: []byte{0xff, 0xff}}
	infoAny := mustAny(t, info("CONFORMANCE_ODD", map[string]string{"k": "v"}))
	p := &spb.Status{Code: int32(codes.InvalidArgument), Message: "odd", Details: []*anypb.Any{unknown, garbage, nil, infoAny}}
	err := llmgateway.ErrorFromStatus(status.FromProto(p))
	var ir *llmgateway.InvalidRequestError
	if !errors.As(err, &ir) {
		t.Fatalf("got %T %v", err, err)
	}
	if ir.Reason != "CONFORMANCE_ODD" || ir.Metadata["k"] != "v" {
		t.Fatalf("fields: %+v", ir.GatewayError)
	}
	if len(ir.Details) != 4 || !ir.HasDetail("conformance.NoClientKnowsThis") || !ir.HasDetail("google.rpc.ErrorInfo") {
		t.Fatalf("details: %v", ir.Details)
	}
	if _, ok := ir.Details[0].(*anypb.Any); !ok {
		t.Fatalf("the unknown detail should stay an Any: %T", ir.Details[0])
	}
}

func TestDecodeByCodeWithoutDetails(t *testing.T) {
	cases := map[codes.Code]func(error) bool{
		codes.Unauthenticated:  func(e error) bool { var x *llmgateway.UnauthenticatedError; return errors.As(e, &x) },
		codes.PermissionDenied: func(e error) bool { var x *llmgateway.PermissionDeniedError; return errors.As(e, &x) },
		codes.DeadlineExceeded: func(e error) bool { var x *llmgateway.DeadlineExceededError; return errors.As(e, &x) },
		codes.Canceled:         func(e error) bool { var x *llmgateway.CancelledError; return errors.As(e, &x) },
		codes.Internal:         func(e error) bool { var x *llmgateway.InternalError; return errors.As(e, &x) },
		codes.Unknown:          func(e error) bool { var x *llmgateway.InternalError; return errors.As(e, &x) },
		codes.Unavailable:      func(e error) bool { var x *llmgateway.UnavailableError; return errors.As(e, &x) },
	}
	for code, ok := range cases {
		err := decode(status.Error(code, "m"))
		if !ok(err) {
			t.Errorf("%v: got %T", code, err)
		}
	}
	// A code with no specific type is a plain *GatewayError.
	err := decode(status.Error(codes.AlreadyExists, "again"))
	var gw *llmgateway.GatewayError
	if !errors.As(err, &gw) || gw.Code != codes.AlreadyExists || err.Error() != "llmgateway: ALREADY_EXISTS: again" {
		t.Fatalf("got %T %v", err, err)
	}
	// gRPC's own message-size limit.
	var tl *llmgateway.RequestTooLargeError
	if err := decode(status.Error(codes.ResourceExhausted, "grpc: received message larger than max (5 vs. 4)")); !errors.As(err, &tl) {
		t.Fatalf("got %T", err)
	}
}

func TestForeignDomainFallsBackToCode(t *testing.T) {
	err := decode(statusErr(t, codes.NotFound, "m", &errdetails.ErrorInfo{Reason: "API_KEY_INVALID", Domain: "other.example"}))
	var nf *llmgateway.ModelNotFoundError
	if !errors.As(err, &nf) {
		t.Fatalf("got %T", err)
	}
}

func TestContextErrorsAreWrapped(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := llmgateway.FromError(ctx, status.Error(codes.Canceled, "context canceled"))
	var ce *llmgateway.CancelledError
	if !errors.As(err, &ce) || !errors.Is(err, context.Canceled) {
		t.Fatalf("got %T %v", err, err)
	}
	if llmgateway.FromError(ctx, nil) != nil {
		t.Fatal("nil must stay nil")
	}
	plain := errors.New("not grpc")
	if llmgateway.FromError(context.Background(), plain) != plain {
		t.Fatal("a non-status error is returned unchanged")
	}
}

func TestNanoUSDString(t *testing.T) {
	for nano, want := range map[int64]string{0: "0.000000000", 1234: "0.000001234", 2_500_000_000: "2.500000000", -5: "-0.000000005"} {
		if got := llmgateway.NanoUSDString(nano); got != want {
			t.Errorf("%d: %q, want %q", nano, got, want)
		}
	}
}
