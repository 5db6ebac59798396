package llmgateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmgateway/llmgateway/clients/go/llmgateway"
)

// scenario is one entry of clients/conformance/scenarios.json (its "about" explains
// every field). Unknown fields fail the test, so a new field cannot be ignored.
type scenario struct {
	Name              string   `json:"name"`
	RPC               string   `json:"rpc"`
	Server            string   `json:"server"`
	Model             string   `json:"model"`
	Prompt            string   `json:"prompt"`
	MaxTokens         int64    `json:"max_tokens"`
	Temperature       *float64 `json:"temperature"`
	TimeoutMS         int64    `json:"timeout_ms"`
	APIKey            string   `json:"api_key"`
	CancelAfterDeltas int      `json:"cancel_after_deltas"`
	Expect            expect   `json:"expect"`
}

type expect struct {
	OK                 bool              `json:"ok"`
	Content            *string           `json:"content"`
	Stream             bool              `json:"stream"`
	UsagePositive      bool              `json:"usage_positive"`
	CostPositive       bool              `json:"cost_positive"`
	Code               string            `json:"code"`
	Reason             string            `json:"reason"`
	Error              string            `json:"error"`
	Metadata           map[string]string `json:"metadata"`
	MetadataKeys       []string          `json:"metadata_keys"`
	FieldViolations    []string          `json:"field_violations"`
	RetryDelayS        *int64            `json:"retry_delay_s"`
	QuotaFailure       bool              `json:"quota_failure"`
	UpstreamDisconnect bool              `json:"upstream_disconnect"`
	UnknownDetails     bool              `json:"unknown_details"`
}

// errorTypes maps the neutral error names of the scenarios to this client's types.
var errorTypes = map[string]func(error) bool{
	"Unauthenticated":       isType[*llmgateway.UnauthenticatedError],
	"PermissionDenied":      isType[*llmgateway.PermissionDeniedError],
	"ModelNotFound":         isType[*llmgateway.ModelNotFoundError],
	"InvalidRequest":        isType[*llmgateway.InvalidRequestError],
	"ContextWindowExceeded": isType[*llmgateway.ContextWindowExceededError],
	"ContentBlocked":        isType[*llmgateway.ContentBlockedError],
	"CostLimitExceeded":     isType[*llmgateway.CostLimitExceededError],
	"BudgetExceeded":        isType[*llmgateway.BudgetExceededError],
	"RateLimited":           isType[*llmgateway.RateLimitedError],
	"ResourceExhausted":     isType[*llmgateway.ResourceExhaustedError],
	"Unavailable":           isType[*llmgateway.UnavailableError],
	"DeadlineExceeded":      isType[*llmgateway.DeadlineExceededError],
	"Cancelled":             isType[*llmgateway.CancelledError],
	"Internal":              isType[*llmgateway.InternalError],
}

func isType[T error](err error) bool {
	var target T
	return errors.As(err, &target)
}

func loadScenarios(t *testing.T) []scenario {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(), "clients", "conformance", "scenarios.json"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		About     string     `json:"about"`
		Scenarios []scenario `json:"scenarios"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&file); err != nil {
		t.Fatalf("scenarios.json: %v", err)
	}
	if len(file.Scenarios) == 0 {
		t.Fatal("scenarios.json has no scenarios")
	}
	return file.Scenarios
}

func TestConformance(t *testing.T) {
	scenarios := loadScenarios(t)
	h := startHarness(t)
	for _, sc := range scenarios {
		t.Run(sc.Name, func(t *testing.T) { runScenario(t, h, sc) })
	}
}

func disconnects(t *testing.T, url string) int64 {
	t.Helper()
	resp, err := http.Get(url) //nolint:noctx // local harness
	if err != nil {
		t.Fatalf("upstream_state: %v", err)
	}
	defer resp.Body.Close()
	var state struct {
		Disconnects int64 `json:"disconnects"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&state); err != nil {
		t.Fatalf("upstream_state: %v", err)
	}
	return state.Disconnects
}

func runScenario(t *testing.T, h *harness, sc scenario) {
	addr := h.Gateway
	switch sc.Server {
	case "", "gateway":
	case "odd":
		addr = h.Odd
	default:
		t.Fatalf("unknown server %q", sc.Server)
	}
	key := h.APIKey
	if sc.APIKey != "" {
		key = sc.APIKey
	}
	client, err := llmgateway.New(addr, llmgateway.WithAPIKey(key))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	timeout := 30 * time.Second
	if sc.TimeoutMS > 0 {
		timeout = time.Duration(sc.TimeoutMS) * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req := llmgateway.Prompt(sc.Model, sc.Prompt)
	req.MaxTokens = sc.MaxTokens
	req.Temperature = sc.Temperature

	var before int64
	if sc.Expect.UpstreamDisconnect {
		before = disconnects(t, h.UpstreamState)
	}

	var completion *llmgateway.Completion
	var deltas []string
	switch sc.RPC {
	case "Complete":
		completion, err = client.Complete(ctx, req)
	case "StreamComplete":
		var stream *llmgateway.Stream
		stream, err = client.Stream(ctx, req)
		if err == nil {
			for stream.Next() {
				deltas = append(deltas, stream.Delta())
				if sc.CancelAfterDeltas > 0 && len(deltas) == sc.CancelAfterDeltas {
					cancel()
				}
			}
			err = stream.Err()
			completion = stream.Result()
			stream.Close()
		}
	default:
		t.Fatalf("unknown rpc %q", sc.RPC)
	}

	if sc.Expect.UpstreamDisconnect {
		deadline := time.Now().Add(2 * time.Second)
		for disconnects(t, h.UpstreamState) <= before {
			if time.Now().After(deadline) {
				t.Errorf("the upstream saw no disconnect within 2s (before: %d)", before)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	if sc.Expect.OK {
		checkSuccess(t, sc, completion, deltas, err)
		return
	}
	checkError(t, sc.Expect, err)
}

func checkSuccess(t *testing.T, sc scenario, c *llmgateway.Completion, deltas []string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("call failed: %v", err)
	}
	if c == nil {
		t.Fatal("no completion")
	}
	if sc.Expect.Content != nil && c.Content != *sc.Expect.Content {
		t.Errorf("content %q, want %q", c.Content, *sc.Expect.Content)
	}
	if sc.Expect.Stream {
		if len(deltas) == 0 {
			t.Error("the stream sent no delta")
		}
		if joined := strings.Join(deltas, ""); joined != c.Content {
			t.Errorf("deltas join to %q, the result's content is %q", joined, c.Content)
		}
	}
	if sc.Expect.UsagePositive && (c.Usage.InputTokens <= 0 || c.Usage.OutputTokens <= 0) {
		t.Errorf("usage not positive: %+v", c.Usage)
	}
	if sc.Expect.CostPositive && c.Cost.TotalNanoUSD <= 0 {
		t.Errorf("cost not positive: %+v", c.Cost)
	}
}

func checkError(t *testing.T, want expect, err error) {
	t.Helper()
	if err == nil {
		t.Fatal("the call succeeded; want an error")
	}
	var gw *llmgateway.GatewayError
	if !errors.As(err, &gw) {
		t.Fatalf("not a *GatewayError: %T %v", err, err)
	}
	if want.Code != "" && llmgateway.CodeName(gw.Code) != want.Code {
		t.Errorf("code %s, want %s (%v)", llmgateway.CodeName(gw.Code), want.Code, err)
	}
	if want.Reason != "" && gw.Reason != want.Reason {
		t.Errorf("reason %q, want %q", gw.Reason, want.Reason)
	}
	if want.Error != "" {
		is, ok := errorTypes[want.Error]
		if !ok {
			t.Fatalf("no Go type for the error name %q", want.Error)
		}
		if !is(err) {
			t.Errorf("error %T is not the type for %s", err, want.Error)
		}
	}
	for k, v := range want.Metadata {
		if got, ok := gw.Metadata[k]; !ok || got != v {
			t.Errorf("metadata[%q] = %q (present: %v), want %q", k, got, ok, v)
		}
	}
	for _, k := range want.MetadataKeys {
		if _, ok := gw.Metadata[k]; !ok {
			t.Errorf("metadata has no %q: %v", k, gw.Metadata)
		}
	}
	for _, field := range want.FieldViolations {
		found := false
		for _, v := range gw.FieldViolations {
			found = found || v.Field == field
		}
		if !found {
			t.Errorf("no field violation for %q: %+v", field, gw.FieldViolations)
		}
	}
	if want.RetryDelayS != nil && int64(gw.RetryDelay/time.Second) != *want.RetryDelayS {
		t.Errorf("retry delay %v, want %ds", gw.RetryDelay, *want.RetryDelayS)
	}
	if want.QuotaFailure && !gw.HasDetail("google.rpc.QuotaFailure") {
		t.Errorf("no QuotaFailure detail: %v", describe(gw))
	}
	if want.UnknownDetails {
		unknown := 0
		for _, d := range gw.Details {
			if strings.HasSuffix(fmt.Sprintf("%T", d), "anypb.Any") {
				unknown++
			}
		}
		if unknown == 0 {
			t.Errorf("the unknown detail was not kept: %v", describe(gw))
		}
	}
}

func describe(gw *llmgateway.GatewayError) string {
	names := make([]string, 0, len(gw.Details))
	for _, d := range gw.Details {
		names = append(names, string(d.ProtoReflect().Descriptor().FullName()))
	}
	return strings.Join(names, ", ")
}
