package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
)

// exporterProc is one dbpool_exporter under measurement.
type exporterProc struct {
	label string
	url   string
	*childproc.Process
}

// startExporter starts bin on a free loopback port with its log lines tagged on stderr, and
// waits until it is healthy.
func startExporter(ctx context.Context, bin, label, dsn string, args []string) (*exporterProc, error) {
	port, err := pgtest.FreePort()
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	p, err := childproc.Start(childproc.Spec{
		Name: "exporter (" + label + ")",
		Path: bin,
		Args: append([]string{"--web.listen-address=" + addr}, args...),
		Env:  append(childproc.Environ(callerDBEnv...), "DATA_SOURCE_NAME="+dsn),
		Tee:  &prefixWriter{prefix: "exporter[" + label + "]: ", w: os.Stderr},
	})
	if err != nil {
		return nil, err
	}
	e := &exporterProc{label: label, url: "http://" + addr + "/metrics", Process: p}
	if err := p.WaitReady(ctx, 15*time.Second, 50*time.Millisecond, childproc.HTTPReady("http://"+addr+"/-/healthy")); err != nil {
		e.stop()
		return nil, err
	}
	return e, nil
}

func (e *exporterProc) stop() { _ = e.Stop(syscall.SIGTERM, 10*time.Second) }

// prefixWriter tags each line of a child's log.
type prefixWriter struct {
	mu     sync.Mutex
	prefix string
	w      io.Writer
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.buf[:i])
		p.buf = p.buf[i+1:]
	}
}
