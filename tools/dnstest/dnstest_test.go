package dnstest

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"
)

func resolver(addr string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
}

func lookup(t *testing.T, s *Server, name string, timeout time.Duration) ([]netip.Addr, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	addrs, err := resolver(s.Addr()).LookupNetIP(ctx, "ip", name)
	slices.SortFunc(addrs, netip.Addr.Compare)
	return addrs, err
}

// TestServer: Go's own resolver gets the A and AAAA records as set, NXDOMAIN for an unknown
// name, refusals while the server is stopped, a timeout while it is slow, and the records
// again after a restart.
func TestServer(t *testing.T) {
	s := Start(t)
	a, b, v6 := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"), netip.MustParseAddr("::1")
	s.Set("api.dbpool.test", b, a, v6)
	if got, err := lookup(t, s, "API.dbpool.test", 2*time.Second); err != nil || !slices.Equal(got, []netip.Addr{a, b, v6}) {
		t.Fatalf("lookup = %v, %v", got, err)
	}
	s.Set("api.dbpool.test", a)
	if got, err := lookup(t, s, "api.dbpool.test.", 2*time.Second); err != nil || !slices.Equal(got, []netip.Addr{a}) {
		t.Fatalf("after Set: %v, %v", got, err)
	}
	var dnsErr *net.DNSError
	if _, err := lookup(t, s, "other.dbpool.test", 2*time.Second); !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Fatalf("unknown name: %v", err)
	}
	s.Set("api.dbpool.test")
	if _, err := lookup(t, s, "api.dbpool.test", 2*time.Second); !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Fatalf("removed name: %v", err)
	}

	s.Set("api.dbpool.test", a)
	s.SetDelay(5 * time.Second)
	start := time.Now()
	if _, err := lookup(t, s, "api.dbpool.test", 300*time.Millisecond); err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("slow server: %v after %v", err, time.Since(start))
	}
	s.SetDelay(0)

	s.Stop()
	if _, err := lookup(t, s, "api.dbpool.test", 2*time.Second); err == nil {
		t.Fatal("a stopped server answered")
	}
	s.Restart(t)
	if got, err := lookup(t, s, "api.dbpool.test", 2*time.Second); err != nil || !slices.Equal(got, []netip.Addr{a}) {
		t.Fatalf("after restart: %v, %v", got, err)
	}
	if s.Queries() < 8 {
		t.Errorf("%d queries counted", s.Queries())
	}
}
