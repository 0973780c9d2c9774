// Package dnstest is tooling, not product: a DNS server over UDP on loopback for the tests
// of DNS discovery. It answers A and AAAA queries from records the test sets and changes
// while it runs, NXDOMAIN for names it has none for, and can be stopped, started again on the
// same address, and slowed down.
package dnstest

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Server is a running test DNS server; its methods are safe for concurrent use.
type Server struct {
	addr string

	mu      sync.Mutex
	conn    net.PacketConn // nil while stopped
	records map[string][]netip.Addr
	delay   time.Duration
	queries int
	stopped chan struct{} // closed by Stop: late answers are dropped
}

// Start starts a server on a free UDP port of 127.0.0.1; it stops when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{addr: conn.LocalAddr().String(), records: map[string][]netip.Addr{}}
	s.serve(conn)
	t.Cleanup(s.Stop)
	return s
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.addr }

// Set makes name resolve to addrs (IPv4 addresses as A records, IPv6 as AAAA), replacing
// what it resolved to before; without addrs the name is unknown (NXDOMAIN).
func (s *Server) Set(name string, addrs ...netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(addrs) == 0 {
		delete(s.records, fqdn(name))
		return
	}
	s.records[fqdn(name)] = append([]netip.Addr(nil), addrs...)
}

// SetDelay makes every answer wait d (a slow server); 0 answers at once.
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}

// Queries is the number of queries received so far.
func (s *Server) Queries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries
}

// Stop closes the server's socket: queries are refused (ICMP port unreachable), and
// answers still being delayed are dropped. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		_ = s.conn.Close()
		close(s.stopped)
		s.conn = nil
	}
}

// Restart listens again on the server's address after Stop.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	conn, err := net.ListenPacket("udp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	s.serve(conn)
}

func (s *Server) serve(conn net.PacketConn) {
	s.mu.Lock()
	s.conn, s.stopped = conn, make(chan struct{})
	stopped := s.stopped
	s.mu.Unlock()
	go func() {
		buf := make([]byte, 4096)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				return // closed by Stop
			}
			query := append([]byte(nil), buf[:n]...)
			go s.answer(conn, from, query, stopped)
		}
	}()
}

// answer writes the answer to one query, after the delay.
func (s *Server) answer(conn net.PacketConn, to net.Addr, query []byte, stopped chan struct{}) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return
	}
	q, err := p.Question()
	if err != nil {
		return
	}
	s.mu.Lock()
	s.queries++
	addrs, known := s.records[strings.ToLower(q.Name.String())]
	delay := s.delay
	s.mu.Unlock()

	rcode := dnsmessage.RCodeSuccess
	if !known {
		rcode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RCode: rcode})
	b.EnableCompression()
	if b.StartQuestions() != nil || b.Question(q) != nil || b.StartAnswers() != nil {
		return
	}
	rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 0}
	for _, a := range addrs {
		switch {
		case q.Type == dnsmessage.TypeA && a.Is4():
			err = b.AResource(rh, dnsmessage.AResource{A: a.As4()})
		case q.Type == dnsmessage.TypeAAAA && a.Is6():
			err = b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: a.As16()})
		}
		if err != nil {
			return
		}
	}
	msg, err := b.Finish()
	if err != nil {
		return
	}
	select {
	case <-time.After(delay):
	case <-stopped:
		return
	}
	_, _ = conn.WriteTo(msg, to)
}

func fqdn(name string) string {
	name = strings.ToLower(name)
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	return name
}
