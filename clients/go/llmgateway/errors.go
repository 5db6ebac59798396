package llmgateway

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of the gateway's errors.
const ErrorDomain = "llmgateway"

// GatewayError is every error a call returns: a gRPC status decoded with its
// google.rpc details. The specific error types (e.g. *ModelNotFoundError) wrap one, so
// errors.As(err, &gwErr) with gwErr a *GatewayError works for every call error.
//
// The gateway's error table (code, reason, details) is in
// protos/llmgateway/v1/gateway.proto. A reason this client does not know falls back
// to the type for the status code.
type GatewayError struct {
	// Code is the gRPC status code.
	Code codes.Code
	// Reason is the google.rpc.ErrorInfo reason (e.g. "MODEL_NOT_FOUND"), or "" when
	// the status carried none (transport errors, client-side deadlines, cancels).
	Reason string
	// Domain is the ErrorInfo domain ("llmgateway"), or "".
	Domain string
	// Message is the status message.
	Message string
	// Metadata is the ErrorInfo metadata (never nil).
	Metadata map[string]string
	// RetryDelay is how long to wait before retrying, from google.rpc.RetryInfo; 0 when
	// the gateway gave no hint.
	RetryDelay time.Duration
	// FieldViolations are google.rpc.BadRequest's field violations.
	FieldViolations []FieldViolation
	// QuotaViolations are google.rpc.QuotaFailure's violations.
	QuotaViolations []QuotaViolation
	// Details are every detail of the status, decoded (*errdetails.ErrorInfo,
	// *errdetails.BadRequest, ...); a detail of a type this program does not know is
	// kept as its *anypb.Any.
	Details []proto.Message

	st    *status.Status
	cause error
}

// FieldViolation is one google.rpc.BadRequest field violation.
type FieldViolation struct {
	Field       string
	Description string
}

// QuotaViolation is one google.rpc.QuotaFailure violation.
type QuotaViolation struct {
	Subject     string
	Description string
}

func (e *GatewayError) Error() string {
	label := e.Reason
	if label == "" {
		label = codeName(e.Code)
	}
	if e.Message == "" {
		return "llmgateway: " + label
	}
	return "llmgateway: " + label + ": " + e.Message
}

// Unwrap returns the context error (context.DeadlineExceeded or context.Canceled) when
// the call ended because its context did, so errors.Is(err, context.Canceled) works.
func (e *GatewayError) Unwrap() error { return e.cause }

// GRPCStatus returns the gRPC status the error was decoded from, so that
// status.FromError and status.Code work on every error of this package.
func (e *GatewayError) GRPCStatus() *status.Status {
	if e.st != nil {
		return e.st
	}
	return status.New(e.Code, e.Message)
}

// HasDetail reports whether the status carried a detail with this type URL suffix,
// e.g. "google.rpc.ErrorInfo".
func (e *GatewayError) HasDetail(fullName string) bool {
	for _, d := range e.Details {
		if a, ok := d.(*anypb.Any); ok {
			if strings.HasSuffix(a.GetTypeUrl(), "/"+fullName) {
				return true
			}
			continue
		}
		if string(d.ProtoReflect().Descriptor().FullName()) == fullName {
			return true
		}
	}
	return false
}

// UnauthenticatedError: the API key is missing, unknown or revoked (API_KEY_INVALID).
type UnauthenticatedError struct{ *GatewayError }

func (e *UnauthenticatedError) Unwrap() error { return e.GatewayError }

// PermissionDeniedError: the caller's tenant may not use the model
// (MODEL_NOT_ALLOWED), or an admin key was used on a gateway call (TENANT_KEY_REQUIRED).
type PermissionDeniedError struct {
	*GatewayError
	// Model and Tenant are from the metadata, "" when the gateway did not say.
	Model, Tenant string
}

func (e *PermissionDeniedError) Unwrap() error { return e.GatewayError }

// ModelNotFoundError: no route has the requested model name (MODEL_NOT_FOUND).
type ModelNotFoundError struct {
	*GatewayError
	// Model is the unknown model, "" when the gateway did not say.
	Model string
}

func (e *ModelNotFoundError) Unwrap() error { return e.GatewayError }

// InvalidRequestError: the request is malformed (INVALID_REQUEST; also the fallback
// for INVALID_ARGUMENT). FieldViolations says which fields.
type InvalidRequestError struct{ *GatewayError }

func (e *InvalidRequestError) Unwrap() error { return e.GatewayError }

// ContextWindowExceededError: the prompt does not fit the context window and the
// policy is to reject (CONTEXT_WINDOW_EXCEEDED). It is also an *InvalidRequestError.
type ContextWindowExceededError struct {
	*InvalidRequestError
	// InputTokens, MaxTokens and ContextWindow are parsed from the metadata
	// (input_token_count, max_tokens, context_window_token_count); 0 when absent.
	InputTokens, MaxTokens, ContextWindow int64
}

func (e *ContextWindowExceededError) Unwrap() error { return e.InvalidRequestError }

// ContentBlockedError: moderation refused the prompt (CONTENT_BLOCKED). It is also
// an *InvalidRequestError. Output blocked by moderation is not an error: see
// Completion.FinishReason.
type ContentBlockedError struct {
	*InvalidRequestError
	// Category is the moderation category, "" when the gateway did not say.
	Category string
}

func (e *ContentBlockedError) Unwrap() error { return e.InvalidRequestError }

// ResourceExhaustedError: a limit was hit (RESOURCE_EXHAUSTED); the more specific
// types below wrap it. QuotaViolations says which.
type ResourceExhaustedError struct{ *GatewayError }

func (e *ResourceExhaustedError) Unwrap() error { return e.GatewayError }

// CostLimitExceededError: the call's estimated cost is over the per-request cost
// limit (COST_LIMIT_EXCEEDED). It is also a *ResourceExhaustedError.
type CostLimitExceededError struct {
	*ResourceExhaustedError
	// LimitNanoUSD and EstimatedNanoUSD are parsed from the metadata; 0 when absent.
	LimitNanoUSD, EstimatedNanoUSD int64
}

func (e *CostLimitExceededError) Unwrap() error { return e.ResourceExhaustedError }

// BudgetExceededError: the tenant's budget is spent (BUDGET_EXCEEDED); RetryDelay
// says when it resets, if known. It is also a *ResourceExhaustedError.
type BudgetExceededError struct{ *ResourceExhaustedError }

func (e *BudgetExceededError) Unwrap() error { return e.ResourceExhaustedError }

// RateLimitedError: the tenant is over its rate limit (RATE_LIMITED); RetryDelay says
// when to retry, if known. It is also a *ResourceExhaustedError.
type RateLimitedError struct{ *ResourceExhaustedError }

func (e *RateLimitedError) Unwrap() error { return e.ResourceExhaustedError }

// RequestTooLargeError: a message is over the gRPC message-size limit (of the gateway
// or of this client). It is also a *ResourceExhaustedError.
type RequestTooLargeError struct{ *ResourceExhaustedError }

func (e *RequestTooLargeError) Unwrap() error { return e.ResourceExhaustedError }

// UnavailableError: the gateway or every upstream target is unavailable
// (UPSTREAM_UNAVAILABLE, STORE_UNAVAILABLE, or no connection at all); worth retrying
// later. The client has already retried UNAVAILABLE (see WithRetryUnavailable).
type UnavailableError struct {
	*GatewayError
	// Attempts are the gateway's attempts, in order, as "<provider>/<model>:<CLASS>".
	Attempts []string
}

func (e *UnavailableError) Unwrap() error { return e.GatewayError }

// DeadlineExceededError: the call's deadline passed (the context's, the client's
// default timeout, or the gateway's own).
type DeadlineExceededError struct{ *GatewayError }

func (e *DeadlineExceededError) Unwrap() error { return e.GatewayError }

// CancelledError: the call was cancelled (its context was, or the gateway did).
type CancelledError struct{ *GatewayError }

func (e *CancelledError) Unwrap() error { return e.GatewayError }

// InternalError: the gateway failed internally; details are only in its logs.
type InternalError struct{ *GatewayError }

func (e *InternalError) Unwrap() error { return e.GatewayError }

// ProtocolError: the gateway broke the contract, e.g. a stream ended without its result.
type ProtocolError struct{ *GatewayError }

func (e *ProtocolError) Unwrap() error { return e.GatewayError }

func newProtocolError(msg string) error {
	return &ProtocolError{&GatewayError{Code: codes.Unknown, Message: msg, Metadata: map[string]string{}}}
}

// kind builds the specific error for a decoded base error.
type kind func(*GatewayError) error

var byReason = map[string]kind{
	"API_KEY_INVALID":         unauthenticated,
	"MODEL_NOT_ALLOWED":       permissionDenied,
	"TENANT_KEY_REQUIRED":     permissionDenied,
	"MODEL_NOT_FOUND":         modelNotFound,
	"INVALID_REQUEST":         invalidRequest,
	"CONTEXT_WINDOW_EXCEEDED": contextWindowExceeded,
	"CONTENT_BLOCKED":         contentBlocked,
	"COST_LIMIT_EXCEEDED":     costLimitExceeded,
	"BUDGET_EXCEEDED":         func(e *GatewayError) error { return &BudgetExceededError{&ResourceExhaustedError{e}} },
	"RATE_LIMITED":            func(e *GatewayError) error { return &RateLimitedError{&ResourceExhaustedError{e}} },
	"REQUEST_TOO_LARGE":       func(e *GatewayError) error { return &RequestTooLargeError{&ResourceExhaustedError{e}} },
	"UPSTREAM_UNAVAILABLE":    unavailable,
	"STORE_UNAVAILABLE":       unavailable,
	"DEADLINE_EXCEEDED":       func(e *GatewayError) error { return &DeadlineExceededError{e} },
	"INTERNAL":                internal,
}

var byCode = map[codes.Code]kind{
	codes.Unauthenticated:   unauthenticated,
	codes.PermissionDenied:  permissionDenied,
	codes.NotFound:          modelNotFound,
	codes.InvalidArgument:   invalidRequest,
	codes.ResourceExhausted: func(e *GatewayError) error { return &ResourceExhaustedError{e} },
	codes.Unavailable:       unavailable,
	codes.DeadlineExceeded:  func(e *GatewayError) error { return &DeadlineExceededError{e} },
	codes.Canceled:          func(e *GatewayError) error { return &CancelledError{e} },
	codes.Internal:          internal,
	codes.Unknown:           internal,
	codes.Unimplemented:     internal,
	codes.DataLoss:          internal,
}

func unauthenticated(e *GatewayError) error { return &UnauthenticatedError{e} }
func internal(e *GatewayError) error        { return &InternalError{e} }
func invalidRequest(e *GatewayError) error  { return &InvalidRequestError{e} }

func permissionDenied(e *GatewayError) error {
	return &PermissionDeniedError{GatewayError: e, Model: e.Metadata["model"], Tenant: e.Metadata["tenant"]}
}

func modelNotFound(e *GatewayError) error {
	return &ModelNotFoundError{GatewayError: e, Model: e.Metadata["model"]}
}

func contextWindowExceeded(e *GatewayError) error {
	return &ContextWindowExceededError{
		InvalidRequestError: &InvalidRequestError{e},
		InputTokens:         metaInt(e.Metadata, "input_token_count"),
		MaxTokens:           metaInt(e.Metadata, "max_tokens"),
		ContextWindow:       metaInt(e.Metadata, "context_window_token_count"),
	}
}

func contentBlocked(e *GatewayError) error {
	return &ContentBlockedError{InvalidRequestError: &InvalidRequestError{e}, Category: e.Metadata["category"]}
}

func costLimitExceeded(e *GatewayError) error {
	return &CostLimitExceededError{
		ResourceExhaustedError: &ResourceExhaustedError{e},
		LimitNanoUSD:           metaInt(e.Metadata, "limit_nano_usd"),
		EstimatedNanoUSD:       metaInt(e.Metadata, "estimated_nano_usd"),
	}
}

var attemptKey = regexp.MustCompile(`^attempt_([0-9]+)$`)

func unavailable(e *GatewayError) error {
	type numbered struct {
		n     int
		value string
	}
	var found []numbered
	for k, v := range e.Metadata {
		if m := attemptKey.FindStringSubmatch(k); m != nil {
			n, err := strconv.Atoi(m[1])
			if err == nil {
				found = append(found, numbered{n, v})
			}
		}
	}
	sort.Slice(found, func(i, j int) bool { return found[i].n < found[j].n })
	attempts := make([]string, 0, len(found))
	for _, a := range found {
		attempts = append(attempts, a.value)
	}
	return &UnavailableError{GatewayError: e, Attempts: attempts}
}

func metaInt(md map[string]string, key string) int64 {
	n, err := strconv.ParseInt(md[key], 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// ErrorFromStatus builds the typed error for a non-OK gRPC status: one of this
// package's error types, chosen by the ErrorInfo reason (domain "llmgateway" or none)
// and else by the status code. It returns nil for an OK status. Details of types
// this program does not know are kept as *anypb.Any, never an error.
func ErrorFromStatus(st *status.Status) error {
	if st == nil || st.Code() == codes.OK {
		return nil
	}
	e := &GatewayError{Code: st.Code(), Message: st.Message(), Metadata: map[string]string{}, st: st}
	for _, raw := range st.Proto().GetDetails() {
		e.Details = append(e.Details, decodeDetail(raw))
	}
	var info *errdetails.ErrorInfo
	for _, d := range e.Details {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			if info == nil {
				info = d
			}
		case *errdetails.RetryInfo:
			if d.GetRetryDelay() != nil {
				e.RetryDelay = d.GetRetryDelay().AsDuration()
			}
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				e.FieldViolations = append(e.FieldViolations, FieldViolation{Field: v.GetField(), Description: v.GetDescription()})
			}
		case *errdetails.QuotaFailure:
			for _, v := range d.GetViolations() {
				e.QuotaViolations = append(e.QuotaViolations, QuotaViolation{Subject: v.GetSubject(), Description: v.GetDescription()})
			}
		}
	}
	if info != nil {
		e.Reason = info.GetReason()
		e.Domain = info.GetDomain()
		for k, v := range info.GetMetadata() {
			e.Metadata[k] = v
		}
	}
	var build kind
	if e.Reason != "" && (e.Domain == "" || e.Domain == ErrorDomain) {
		build = byReason[e.Reason]
	}
	if build == nil {
		build = byCode[e.Code]
		if e.Code == codes.ResourceExhausted && info == nil && strings.Contains(e.Message, "larger than max") {
			build = byReason["REQUEST_TOO_LARGE"]
		}
	}
	if build == nil {
		return e
	}
	return build(e)
}

// decodeDetail unpacks one status detail: the known google.rpc types (and any other
// type linked into the program); anything else stays the *anypb.Any it came as.
func decodeDetail(raw *anypb.Any) proto.Message {
	if raw == nil {
		return &anypb.Any{}
	}
	msg, err := raw.UnmarshalNew()
	if err != nil {
		return raw
	}
	return msg
}

// FromError converts an error from a gRPC call to this package's typed error. An
// error that already is one, or that is not a gRPC status, is returned unchanged.
// ctx, when not nil, is the call's context: when it has ended, the typed error also
// wraps ctx.Err() (so errors.Is(err, context.DeadlineExceeded) works).
func FromError(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	var gw *GatewayError
	if errors.As(err, &gw) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		if ctx != nil && ctx.Err() != nil {
			st = status.FromContextError(ctx.Err())
		} else {
			return err
		}
	}
	typed := ErrorFromStatus(st)
	if typed == nil {
		return err
	}
	if ctx != nil && ctx.Err() != nil {
		if errors.As(typed, &gw) && (gw.Code == codes.Canceled || gw.Code == codes.DeadlineExceeded) {
			gw.cause = ctx.Err()
		}
	}
	return typed
}

func codeName(c codes.Code) string {
	names := map[codes.Code]string{
		codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN",
		codes.InvalidArgument: "INVALID_ARGUMENT", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
		codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
		codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
		codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED",
		codes.OutOfRange: "OUT_OF_RANGE", codes.Unimplemented: "UNIMPLEMENTED",
		codes.Internal: "INTERNAL", codes.Unavailable: "UNAVAILABLE", codes.DataLoss: "DATA_LOSS",
		codes.Unauthenticated: "UNAUTHENTICATED",
	}
	if n, ok := names[c]; ok {
		return n
	}
	return fmt.Sprintf("CODE(%d)", uint32(c))
}

// CodeName is the canonical upper-case name of a gRPC code ("NOT_FOUND", "CANCELLED").
func CodeName(c codes.Code) string { return codeName(c) }
