package testbin

import (
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
)

// Buffer collects a child process's output while the test reads it; see childproc.Buffer.
type Buffer = childproc.Buffer

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

// SilentListener listens on a free loopback port, accepts TCP connections, counts them and
// never answers: a server that hangs after accept. It returns the address and the count;
// the listener and the connections it holds close when the test ends.
func SilentListener(t testing.TB) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return ln.Addr().String(), &n
}
