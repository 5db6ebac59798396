// Command example streams one completion from the gateway and prints the text as it
// comes, then the usage and the cost.
//
//	make run    # in another terminal: the gateway on 127.0.0.1:50051 (mock provider)
//	cd clients/go && go run ./example -prompt "Hello"
//
// Flags override the environment: LLMGATEWAY_ADDR (default 127.0.0.1:50051) and
// LLMGATEWAY_API_KEY (none by default: `make run` has an anonymous tenant).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"time"

	"github.com/llmgateway/llmgateway/clients/go/llmgateway"
)

func main() {
	os.Exit(run())
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func run() int {
	addr := flag.String("addr", envOr("LLMGATEWAY_ADDR", llmgateway.DefaultTarget), "gateway address (env LLMGATEWAY_ADDR)")
	key := flag.String("key", os.Getenv("LLMGATEWAY_API_KEY"), "API key (env LLMGATEWAY_API_KEY)")
	model := flag.String("model", "default", "model (route) name")
	prompt := flag.String("prompt", "Tell me a short story about a gateway.", "the user prompt")
	maxTokens := flag.Int64("max-tokens", 0, "most output tokens (0: the route's default)")
	timeout := flag.Duration("timeout", 60*time.Second, "deadline of the whole stream")
	flag.Parse()

	var opts []llmgateway.Option
	if *key != "" {
		opts = append(opts, llmgateway.WithAPIKey(*key))
	}
	client, err := llmgateway.New(*addr, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer client.Close()

	// Ctrl-C cancels the call; the deadline bounds it.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	req := llmgateway.Prompt(*model, *prompt)
	req.MaxTokens = *maxTokens
	stream, err := client.Stream(ctx, req)
	if err != nil {
		return report(err)
	}
	defer stream.Close()
	for stream.Next() {
		fmt.Print(stream.Delta())
	}
	if stream.Text() != "" {
		fmt.Println()
	}
	if err := stream.Err(); err != nil {
		return report(err)
	}
	c := stream.Result()
	fmt.Printf("finish: %s  provider: %s/%s\n", c.FinishReason, c.Provider, c.UpstreamModel)
	fmt.Printf("usage: %d input, %d output, %d cached input tokens\n",
		c.Usage.InputTokens, c.Usage.OutputTokens, c.Usage.CachedInputTokens)
	fmt.Printf("cost: $%s (price version %q)\n", c.Cost.USD(), c.Cost.PriceVersion)
	return 0
}

func report(err error) int {
	var unauth *llmgateway.UnauthenticatedError
	var notFound *llmgateway.ModelNotFoundError
	var unavailable *llmgateway.UnavailableError
	switch {
	case errors.As(err, &unauth):
		fmt.Fprintln(os.Stderr, "the gateway refused the API key (set LLMGATEWAY_API_KEY or -key):", err)
	case errors.As(err, &notFound):
		fmt.Fprintf(os.Stderr, "no route named %q: %v\n", notFound.Model, err)
	case errors.As(err, &unavailable):
		fmt.Fprintln(os.Stderr, "the gateway is unavailable (is `make run` running?):", err)
	default:
		fmt.Fprintln(os.Stderr, err)
	}
	return 1
}
