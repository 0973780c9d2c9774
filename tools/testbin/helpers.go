package testbin

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
)

// Buffer collects a child process's output while the test reads it. exec copies the
// child's stdout and stderr in from its own goroutines, so a bare bytes.Buffer would race
// with the test calling String. The zero value is ready to use.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p; it implements io.Writer for exec.Cmd.Stdout and Stderr.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Get fetches url and returns the status code and the whole body. A transport or read
// error fails the test; a non-2xx status does not, so that callers can assert on it.
func Get(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// FreeAddr returns a loopback host:port that was free a moment ago, for a child process
// to listen on. The port is released before returning, so another process could take it
// in between; tests accept that small race in exchange for running in parallel.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
