package main

import (
	"io"
	"os"
	"strings"

	"github.com/dbpool/dbpool_exporter/collector"
)

type loginCount struct{ all, probe int }

// Markers of a login in the logs, followed by the user name.
const (
	pgLogin      = "connection authorized: user=" // log_connections
	bouncerLogin = "login attempt: db=pgbouncer user="
)

// countLogins counts the login lines per user, and those of the dbpool_exporter probe.
func countLogins(log, marker string) map[string]loginCount {
	out := map[string]loginCount{}
	for line := range strings.SplitSeq(log, "\n") {
		_, rest, ok := strings.Cut(line, marker)
		if !ok {
			continue
		}
		user, _, _ := strings.Cut(rest, " ")
		c := out[user]
		c.all++
		if strings.Contains(rest, "application_name="+collector.ApplicationName+"_probe") {
			c.probe++
		}
		out[user] = c
	}
	return out
}

// logReader reads what a log file gets after it was opened.
type logReader struct{ f *os.File }

func openLog(path string) (*logReader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return nil, err
	}
	return &logReader{f}, nil
}

// rest returns what was appended since the open, and closes the file.
func (l *logReader) rest() string {
	defer l.f.Close()
	b, _ := io.ReadAll(l.f)
	return string(b)
}
