package health

import (
	"bufio"
	"encoding/json"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
)

// devtools drives headless Chromium over the DevTools protocol on a pipe
// (--remote-debugging-pipe: commands in on fd 3, answers and events out on fd 4, each a JSON
// message ending in a NUL byte). A pipe needs no port and no websocket client, and the few
// messages a page check needs are written here rather than pulled in with a library.
type devtools struct {
	t       *testing.T
	proc    *childproc.Process
	in      *os.File // our end of Chromium's fd 3
	msgs    chan cdpMessage
	pending []cdpMessage // events read while waiting for an answer
	nextID  int
	session string
}

type cdpMessage struct {
	ID        int             `json:"id,omitempty"`
	Method    string          `json:"method,omitempty"`
	SessionID string          `json:"sessionId,omitempty"`
	Params    json.RawMessage `json:"params,omitempty"`
	Result    json.RawMessage `json:"result,omitempty"`
	Error     *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error,omitempty"`
}

// devtoolsTimeout bounds every answer Chromium owes.
const devtoolsTimeout = 60 * time.Second

// startDevtools starts Chromium with the flags of runChromium and a blank page attached.
func startDevtools(t *testing.T, bin string) *devtools {
	t.Helper()
	cmdR, cmdW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	args := append(chromiumFlags(t.TempDir()), "--remote-debugging-pipe", "--hide-scrollbars", "about:blank")
	proc, err := childproc.Start(childproc.Spec{Path: bin, Args: args, ExtraFiles: []*os.File{cmdR, outW}})
	cmdR.Close()
	outW.Close()
	if err != nil {
		t.Fatal(err)
	}
	d := &devtools{t: t, proc: proc, in: cmdW, msgs: make(chan cdpMessage, 64)}
	t.Cleanup(func() {
		cmdW.Close()
		if err := proc.Stop(syscall.SIGTERM, 5*time.Second); err != nil {
			t.Logf("chromium: %v", err)
		}
		outR.Close()
	})
	go func() {
		defer close(d.msgs)
		r := bufio.NewReader(outR)
		for {
			raw, err := r.ReadBytes(0)
			if err != nil {
				return
			}
			var m cdpMessage
			if json.Unmarshal(raw[:len(raw)-1], &m) == nil {
				d.msgs <- m
			}
		}
	}()
	var target struct {
		TargetID string `json:"targetId"`
	}
	d.call("", "Target.createTarget", map[string]any{"url": "about:blank"}, &target)
	var attached struct {
		SessionID string `json:"sessionId"`
	}
	d.call("", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &attached)
	d.session = attached.SessionID
	d.call(d.session, "Page.enable", nil, nil)
	return d
}

// call sends a command and decodes its answer into result (when not nil).
func (d *devtools) call(session, method string, params any, result any) {
	d.t.Helper()
	d.nextID++
	id := d.nextID
	msg := map[string]any{"id": id, "method": method}
	if params != nil {
		msg["params"] = params
	}
	if session != "" {
		msg["sessionId"] = session
	}
	raw, err := json.Marshal(msg)
	if err != nil {
		d.t.Fatal(err)
	}
	if _, err := d.in.Write(append(raw, 0)); err != nil {
		d.t.Fatalf("devtools %s: %v\n%s", method, err, d.proc.Output())
	}
	m := d.await(method, func(m cdpMessage) bool { return m.ID == id })
	if m.Error != nil {
		d.t.Fatalf("devtools %s: %d %s", method, m.Error.Code, m.Error.Message)
	}
	if result != nil {
		if err := json.Unmarshal(m.Result, result); err != nil {
			d.t.Fatalf("devtools %s: %v: %s", method, err, m.Result)
		}
	}
}

// await returns the first message that match accepts, keeping the others.
func (d *devtools) await(what string, match func(cdpMessage) bool) cdpMessage {
	d.t.Helper()
	for i, m := range d.pending {
		if match(m) {
			d.pending = append(d.pending[:i], d.pending[i+1:]...)
			return m
		}
	}
	timeout := time.After(devtoolsTimeout)
	for {
		select {
		case m, ok := <-d.msgs:
			if !ok {
				d.t.Fatalf("chromium went away waiting for %s:\n%s", what, childproc.Tail(d.proc.Output(), 20))
			}
			if match(m) {
				return m
			}
			if m.ID == 0 {
				d.pending = append(d.pending, m)
			}
		case <-timeout:
			d.t.Fatalf("no %s from chromium in %s", what, devtoolsTimeout)
		}
	}
}

// open loads url in a viewport of width x height CSS pixels (a phone's when narrow) and
// waits for the load event.
func (d *devtools) open(url string, width, height int) {
	d.t.Helper()
	d.call(d.session, "Emulation.setDeviceMetricsOverride", map[string]any{
		"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600,
	}, nil)
	d.pending = nil
	var nav struct {
		ErrorText string `json:"errorText"`
	}
	d.call(d.session, "Page.navigate", map[string]any{"url": url}, &nav)
	if nav.ErrorText != "" {
		d.t.Fatalf("navigating to %s: %s", url, nav.ErrorText)
	}
	d.await("Page.loadEventFired", func(m cdpMessage) bool {
		return m.Method == "Page.loadEventFired" && m.SessionID == d.session
	})
}

// eval runs a JavaScript expression in the page and decodes its value into result.
func (d *devtools) eval(expr string, result any) {
	d.t.Helper()
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	d.call(d.session, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}, &r)
	if e := r.ExceptionDetails; e != nil {
		d.t.Fatalf("evaluating in the page: %s %s", e.Text, e.Exception.Description)
	}
	if err := json.Unmarshal(r.Result.Value, result); err != nil {
		d.t.Fatalf("the page's answer: %v: %s", err, r.Result.Value)
	}
}

// screenshot saves a PNG of the viewport, or of the whole page when full: the viewport is
// stretched to the page's height for it (and put back), so that the page lays out as it does
// on the screen, only taller.
func (d *devtools) screenshot(path string, width, height int, full bool) {
	d.t.Helper()
	if full {
		var h int
		d.eval(`document.documentElement.scrollHeight`, &h)
		d.call(d.session, "Emulation.setDeviceMetricsOverride", map[string]any{
			"width": width, "height": h, "deviceScaleFactor": 1, "mobile": width < 600,
		}, nil)
		defer d.call(d.session, "Emulation.setDeviceMetricsOverride", map[string]any{
			"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600,
		}, nil)
	}
	var shot struct {
		Data []byte `json:"data"` // base64 in JSON: []byte decodes it
	}
	d.call(d.session, "Page.captureScreenshot", map[string]any{"format": "png"}, &shot)
	if len(shot.Data) < 1000 || !strings.HasPrefix(string(shot.Data), "\x89PNG") {
		d.t.Fatalf("screenshot %s: %d bytes", path, len(shot.Data))
	}
	if err := os.WriteFile(path, shot.Data, 0o644); err != nil {
		d.t.Fatal(err)
	}
}
