package collector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// Where the endpoints of an apps entry come from, on every scrape: one URL; every address of
// a DNS name (dns+http://name:port/path, as in Thanos and Cortex), looked up on each scrape;
// or every target of a Prometheus file_sd file, read again when it changes. When a lookup or
// the file fails, the endpoints of the last good answer stay in force: a DNS server that is
// down or slow, or a file caught half-written, costs no pool data, only the source's
// success.

// maxFileSD bounds a file_sd file: thousands of targets fit many times over.
const maxFileSD = 4 << 20

// endpointFinder gives an apps entry's endpoints for one scrape. With an error it returns the
// endpoints still in force (those of the last good answer, possibly none). It is called by
// one scrape at a time, but a scrape that outlived its deadline may still be in it.
type endpointFinder interface {
	endpoints(ctx context.Context) ([]appEndpoint, error)
}

// appResolver resolves the names of app endpoints: the system's resolver, or with server
// (host:port, from --app.dns-server) one that sends every query there, e.g. to the cluster
// DNS. Either way a lookup ends with its context.
type appResolver struct {
	*net.Resolver
	server string
}

func newAppResolver(server string) appResolver {
	if server == "" {
		return appResolver{Resolver: net.DefaultResolver}
	}
	return appResolver{server: server, Resolver: &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, server)
		},
	}}
}

// lookup returns the addresses of host, sorted, each once. Its error names the server asked
// (Go's resolver names the system's, which --app.dns-server replaces).
func (r appResolver) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	addrs, err := r.LookupNetIP(ctx, "ip", host)
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		if r.server != "" {
			dnsErr.Server = r.server
		}
		return nil, dnsErr
	}
	if err != nil {
		return nil, err
	}
	for i, a := range addrs {
		addrs[i] = a.Unmap()
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	return slices.Compact(addrs), nil
}

func newAppEntry(a poolcfg.App, resolver appResolver) (*appEntry, error) {
	e := &appEntry{app: a}
	serverName := ""
	switch host, port, dns := a.URL.DNSName(); {
	case a.FileSD != "":
		format, err := poolcfg.FileSDFormatOf(a.FileSD)
		if err != nil {
			return nil, fmt.Errorf("file_sd %s: %w", a.FileSD, err)
		}
		e.find = &fileSDFinder{path: a.FileSD, format: format, template: a.URL}
	case dns:
		// The endpoints' URLs carry addresses; the Host header and the name that TLS
		// certificates are checked against stay the name as written.
		e.find = &dnsFinder{resolver: resolver, url: a.URL, host: host, port: port}
		serverName = host
	default:
		e.find = staticEndpoint{appEndpoint{addr: a.URL.DefaultName(), url: a.URL}}
	}
	e.client = newAppClient(resolver.Resolver, serverName)
	return e, nil
}

// endpoints are the entry's endpoints for this scrape, at most metrics.MaxAppEndpoints.
func (e *appEntry) endpoints(ctx context.Context) ([]appEndpoint, error) {
	found, err := e.find.endpoints(ctx)
	if n := len(found); n > metrics.MaxAppEndpoints {
		found = found[:metrics.MaxAppEndpoints]
		err = errors.Join(err, fmt.Errorf("%d endpoints, more than the %d an apps entry may have: reading the first %d",
			n, metrics.MaxAppEndpoints, metrics.MaxAppEndpoints))
	}
	return found, err
}

// staticEndpoint is an entry with one URL.
type staticEndpoint struct{ ep appEndpoint }

func (s staticEndpoint) endpoints(context.Context) ([]appEndpoint, error) {
	return []appEndpoint{s.ep}, nil
}

// dnsFinder looks the name of a dns+ URL up on every scrape: each A and AAAA record is one
// endpoint. An answer replaces the endpoints, even one without addresses (the name is gone:
// nothing to read, and an error); no answer (a server down, slow or failing) keeps those of
// the last answer.
type dnsFinder struct {
	resolver   appResolver
	url        poolcfg.AppURL
	host, port string

	mu   sync.Mutex
	last []appEndpoint
}

func (f *dnsFinder) endpoints(ctx context.Context) ([]appEndpoint, error) {
	addrs, err := f.resolver.lookup(ctx, f.host)
	f.mu.Lock()
	defer f.mu.Unlock()
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		f.last = nil
		return nil, fmt.Errorf("DNS: %s has no A or AAAA record (%v)", f.host, err)
	case err != nil:
		return f.last, fmt.Errorf("DNS: %v; reading the %d endpoints of the last answer", err, len(f.last))
	}
	eps := make([]appEndpoint, 0, len(addrs))
	for _, a := range addrs {
		addr := net.JoinHostPort(a.String(), f.port)
		u, err := f.url.WithHost(addr)
		if err != nil {
			return f.last, fmt.Errorf("DNS: address %s: %w", a, err) // not for an address from LookupNetIP
		}
		eps = append(eps, appEndpoint{addr: addr, url: u, host: f.url.DefaultName()})
	}
	f.last = eps
	return eps, nil
}

// fileSDFinder reads a file_sd file when it changed (another file, size or modification
// time) and keeps the endpoints of the last good version when it becomes garbage, is
// caught half-written or disappears.
type fileSDFinder struct {
	path     string
	format   poolcfg.FileSDFormat
	template poolcfg.AppURL

	mu      sync.Mutex
	read    os.FileInfo   // the version last read, nil if none
	readErr error         // what was wrong with it
	last    []appEndpoint // of the last good version
}

func (f *fileSDFinder) endpoints(context.Context) ([]appEndpoint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	info, err := os.Stat(f.path)
	switch {
	case err != nil:
		f.read = nil // read it again when it is back, even unchanged
		return f.failed(withoutPath(err))
	case !info.Mode().IsRegular():
		f.read = nil
		return f.failed(errors.New("not a regular file"))
	case f.read == nil || !os.SameFile(f.read, info) || f.read.Size() != info.Size() || !f.read.ModTime().Equal(info.ModTime()):
		// What is read may be newer than info (a writer at work): then the next scrape
		// sees another size or time and reads it again.
		f.read = info
		var eps []appEndpoint
		if eps, f.readErr = f.parse(); f.readErr == nil {
			f.last = eps
		}
	}
	switch {
	case f.readErr != nil:
		return f.failed(f.readErr)
	case len(f.last) == 0:
		return nil, fmt.Errorf("file_sd %s lists no targets", f.path)
	}
	return f.last, nil
}

func (f *fileSDFinder) failed(err error) ([]appEndpoint, error) {
	return f.last, fmt.Errorf("file_sd %s: %w; reading the %d endpoints of the last good version", f.path, err, len(f.last))
}

func (f *fileSDFinder) parse() ([]appEndpoint, error) {
	file, err := os.Open(f.path)
	if err != nil {
		return nil, withoutPath(err)
	}
	defer func() { _ = file.Close() }()
	data, err := io.ReadAll(io.LimitReader(file, maxFileSD+1))
	switch {
	case err != nil:
		return nil, err
	case len(data) > maxFileSD:
		return nil, fmt.Errorf("larger than %d bytes", maxFileSD)
	}
	targets, err := poolcfg.ParseFileSD(data, f.format)
	if err != nil {
		return nil, err
	}
	eps := make([]appEndpoint, 0, len(targets))
	for _, t := range targets {
		u, err := f.template.WithHost(t)
		if err != nil {
			return nil, err
		}
		eps = append(eps, appEndpoint{addr: t, url: u})
	}
	return eps, nil
}

// withoutPath is the reason of an os.PathError, whose path the message names already.
func withoutPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
