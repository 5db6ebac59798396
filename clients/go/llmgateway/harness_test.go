package llmgateway_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

// harness is the conformance server (tests/support/conformance_server.py): the real
// gateway, a fake upstream and an "odd" server, all on 127.0.0.1.
type harness struct {
	Gateway       string `json:"gateway"`
	Odd           string `json:"odd"`
	APIKey        string `json:"api_key"`
	UpstreamState string `json:"upstream_state"`

	cmd   *exec.Cmd
	stdin io.WriteCloser
	log   *os.File
}

var (
	harnessOnce sync.Once
	harnessInst *harness
	harnessErr  error
)

// repoRoot is the repository root: ../../.. from this file (clients/go/llmgateway).
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", "..", ".."))
}

// startHarness starts the conformance server once per test binary; TestMain stops it.
func startHarness(t *testing.T) *harness {
	t.Helper()
	if os.Getenv("LLMGATEWAY_SKIP_CONFORMANCE") == "1" {
		t.Skip("LLMGATEWAY_SKIP_CONFORMANCE=1")
	}
	harnessOnce.Do(func() { harnessInst, harnessErr = launchHarness() })
	if harnessErr != nil {
		t.Fatalf("conformance server: %v", harnessErr)
	}
	return harnessInst
}

func launchHarness() (*harness, error) {
	root := repoRoot()
	python := filepath.Join(root, ".venv", "bin", "python")
	if _, err := os.Stat(python); err != nil {
		return nil, fmt.Errorf("%s is missing: run `make` at the repo root first (or set LLMGATEWAY_SKIP_CONFORMANCE=1)", python)
	}
	logFile, err := os.CreateTemp("", "llmgateway-conformance-*.log")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(python, "-m", "tests.support.conformance_server")
	cmd.Dir = root
	cmd.Stderr = logFile
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	h := &harness{cmd: cmd, stdin: stdin, log: logFile}
	type line struct {
		text string
		err  error
	}
	lines := make(chan line, 1)
	go func() {
		reader := bufio.NewReader(stdout)
		text, err := reader.ReadString('\n')
		lines <- line{text, err}
		_, _ = io.Copy(io.Discard, reader) // keep draining
	}()
	select {
	case l := <-lines:
		if l.err == nil {
			l.err = json.Unmarshal([]byte(l.text), h)
		}
		if l.err != nil || h.Gateway == "" {
			h.stop()
			return nil, fmt.Errorf("no ready line (%v): %q\n%s", l.err, l.text, h.logTail())
		}
	case <-time.After(90 * time.Second):
		h.stop()
		return nil, fmt.Errorf("not ready after 90s\n%s", h.logTail())
	}
	return h, nil
}

func (h *harness) logTail() string {
	data, err := os.ReadFile(h.log.Name())
	if err != nil {
		return ""
	}
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return string(data)
}

// stop closes the server's stdin (its signal to stop) and waits, killing it after 15s.
func (h *harness) stop() {
	_ = h.stdin.Close()
	done := make(chan struct{})
	go func() { _ = h.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = h.cmd.Process.Kill()
		<-done
	}
	_ = h.log.Close()
	_ = os.Remove(h.log.Name())
}

func TestMain(m *testing.M) {
	code := m.Run()
	if harnessInst != nil {
		harnessInst.stop()
	}
	os.Exit(code)
}
