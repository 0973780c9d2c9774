// What a simulation reports: per-instance pool numbers, request counters and settings.

package poolsim

// WorkloadStats are one instance's pool numbers plus its request counters.
type WorkloadStats struct {
	PoolStats
	// RequestsTotal counts requests started (not dropped).
	RequestsTotal uint64 `json:"requests_total"`
	// ErrorsTotal counts requests that failed for a reason other than a pool
	// timeout (those are TimeoutsTotal) or shutdown.
	ErrorsTotal uint64 `json:"errors_total"`
	// DroppedTotal counts requests not started because MaxInflight requests
	// were already running.
	DroppedTotal     uint64 `json:"dropped_total"`
	LongQueriesTotal uint64 `json:"long_queries_total"`
	IdleInTxTotal    uint64 `json:"idle_in_transaction_total"`
}

// Add returns the sum of two WorkloadStats.
func (s WorkloadStats) Add(o WorkloadStats) WorkloadStats {
	return WorkloadStats{
		PoolStats:        s.PoolStats.Add(o.PoolStats),
		RequestsTotal:    s.RequestsTotal + o.RequestsTotal,
		ErrorsTotal:      s.ErrorsTotal + o.ErrorsTotal,
		DroppedTotal:     s.DroppedTotal + o.DroppedTotal,
		LongQueriesTotal: s.LongQueriesTotal + o.LongQueriesTotal,
		IdleInTxTotal:    s.IdleInTxTotal + o.IdleInTxTotal,
	}
}

// InstanceStats are the numbers of one instance.
type InstanceStats struct {
	Instance        int    `json:"instance"`
	ApplicationName string `json:"application_name"`
	WorkloadStats
}

// SettingsStats repeats the pool settings in the units of the DB_* variables.
type SettingsStats struct {
	PoolSize       int     `json:"pool_size"`
	MaxOverflow    int     `json:"max_overflow"`
	TimeoutSeconds float64 `json:"timeout_seconds"`
	RecycleSeconds float64 `json:"recycle_seconds"`
	PrePing        bool    `json:"pre_ping"`
}

// Stats is a snapshot of a Sim: every instance and their sum.
type Stats struct {
	Instances int `json:"instances"`
	// PoolImpl is "queuepool" or "pgxpool".
	PoolImpl    PoolImpl        `json:"pool_impl"`
	Settings    SettingsStats   `json:"settings"`
	Inflight    int             `json:"inflight"`
	MaxInflight int             `json:"max_inflight"`
	Total       WorkloadStats   `json:"total"`
	PerInstance []InstanceStats `json:"per_instance"`
	// LastError is the most recent request error (not a pool timeout).
	// pgx errors name user and database, never the password.
	LastError string `json:"last_error,omitempty"`
}

// Stats returns the current numbers; before Run it has no instances.
func (s *Sim) Stats() Stats {
	s.mu.Lock()
	insts := s.instances
	s.mu.Unlock()
	st := Stats{
		Instances: s.cfg.Instances,
		PoolImpl:  s.cfg.impl(),
		Settings: SettingsStats{
			PoolSize:       s.cfg.Pool.Size,
			MaxOverflow:    s.cfg.Pool.MaxOverflow,
			TimeoutSeconds: s.cfg.Pool.Timeout.Seconds(),
			RecycleSeconds: s.cfg.Pool.Recycle.Seconds(),
			PrePing:        s.cfg.Pool.PrePing,
		},
		Inflight:    int(s.inflight.Load()),
		MaxInflight: s.cfg.MaxInflight,
		PerInstance: make([]InstanceStats, 0, len(insts)),
	}
	for _, in := range insts {
		w := WorkloadStats{
			PoolStats:        in.pool.Stats(),
			RequestsTotal:    in.requests.Load(),
			ErrorsTotal:      in.errors.Load(),
			DroppedTotal:     in.dropped.Load(),
			LongQueriesTotal: in.long.Load(),
			IdleInTxTotal:    in.idleTx.Load(),
		}
		st.PerInstance = append(st.PerInstance, InstanceStats{Instance: in.idx, ApplicationName: s.cfg.ApplicationName(in.idx), WorkloadStats: w})
		st.Total = st.Total.Add(w)
	}
	if m := s.lastErr.Load(); m != nil {
		st.LastError = *m
	}
	return st
}
