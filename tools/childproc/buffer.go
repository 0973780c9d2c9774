package childproc

import (
	"bytes"
	"sync"
)

// Buffer collects a child process's output while another goroutine reads it. exec copies the
// child's stdout and stderr in from its own goroutines, so a bare bytes.Buffer would race
// with a reader calling String. The zero value is ready to use.
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
