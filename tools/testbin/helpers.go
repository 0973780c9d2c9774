package testbin

import (
	"io"
	"net"
	"net/http"
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
