package health

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/dbpool/dbpool_exporter/internal/advice"
)

// API paths. APIPrefix and PagePath are what the caller mounts Handler on.
const (
	APIPrefix       = "/api/v1/"
	PagePath        = "/pools"
	PoolsPath       = APIPrefix + "pools"
	StatusPath      = APIPrefix + "status"
	HealthPath      = APIPrefix + "health"
	ConnectionsPath = APIPrefix + "connections"
	OptimizePath    = APIPrefix + "optimize"
)

// PoolsResponse is the body of GET /api/v1/pools.
type PoolsResponse struct {
	WindowSeconds float64  `json:"window_seconds"`
	Pools         []Report `json:"pools"`
}

// poolID names the pool in the per-pool answers.
type poolID struct {
	Target string `json:"target"`
	Pool   string `json:"pool"`
}

type statusResponse struct {
	poolID
	Status
}

type healthResponse struct {
	poolID
	Health
	State        State    `json:"state"`
	StateReasons []string `json:"state_reasons"`
}

type connectionsResponse struct {
	poolID
	advice.Connections
}

type optimizeResponse struct {
	poolID
	Optimization
}

type errorResponse struct {
	Error   string   `json:"error"`
	Targets []string `json:"targets,omitempty"`
}

// Handler serves the JSON API under APIPrefix and the status page at PagePath; mount it on
// both. Only GET (and HEAD) are allowed. Errors are JSON objects {"error": "..."}: 404 for
// an unknown pool or endpoint, 400 for a missing pool= or a pool name that several targets
// share (the answer lists them), 405 for another method.
func (m *Manager) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == PagePath {
			m.servePage(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeJSON(w, http.StatusMethodNotAllowed, errorResponse{Error: "method " + r.Method + " not allowed: use GET"})
			return
		}
		if r.URL.Path == PoolsPath {
			reports := m.Reports()
			writeJSON(w, http.StatusOK, PoolsResponse{WindowSeconds: m.window.Seconds(), Pools: reports})
			return
		}
		answer, ok := map[string]func(Report) any{
			StatusPath: func(rep Report) any { return statusResponse{poolID{rep.Target, rep.Pool}, rep.Status} },
			HealthPath: func(rep Report) any {
				return healthResponse{poolID{rep.Target, rep.Pool}, rep.Health, rep.State, rep.StateReasons}
			},
			ConnectionsPath: func(rep Report) any { return connectionsResponse{poolID{rep.Target, rep.Pool}, rep.Connections} },
			OptimizePath:    func(rep Report) any { return optimizeResponse{poolID{rep.Target, rep.Pool}, rep.Optimization} },
		}[r.URL.Path]
		if !ok {
			writeJSON(w, http.StatusNotFound, errorResponse{Error: "unknown endpoint " + r.URL.Path +
				": use " + strings.Join([]string{PoolsPath, StatusPath, HealthPath, ConnectionsPath, OptimizePath}, ", ")})
			return
		}
		q := r.URL.Query()
		name := q.Get("pool")
		if name == "" {
			writeJSON(w, http.StatusBadRequest, errorResponse{Error: "missing query parameter pool (e.g. " + r.URL.Path + "?pool=default); " + PoolsPath + " lists all pools"})
			return
		}
		rep, err := m.Find(q.Get("target"), name)
		var amb *AmbiguousError
		switch {
		case errors.As(err, &amb):
			writeJSON(w, http.StatusBadRequest, errorResponse{Error: err.Error(), Targets: amb.Targets})
		case err != nil:
			writeJSON(w, http.StatusNotFound, errorResponse{Error: err.Error()})
		default:
			writeJSON(w, http.StatusOK, answer(rep))
		}
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	// Values from the database (application names) reach the answer; the encoder's HTML
	// escaping keeps them inert should a browser render the JSON.
	_ = enc.Encode(v)
}
