// The AcquireTracer's forwarding of every other pgx tracer call to the tracer it wraps.

package pgxpoolcollector

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// TraceQueryStart implements pgx.QueryTracer by forwarding to the wrapped tracer.
func (t *AcquireTracer) TraceQueryStart(ctx context.Context, conn *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	if t.query != nil {
		return t.query.TraceQueryStart(ctx, conn, data)
	}
	return ctx
}

// TraceQueryEnd implements pgx.QueryTracer by forwarding to the wrapped tracer.
func (t *AcquireTracer) TraceQueryEnd(ctx context.Context, conn *pgx.Conn, data pgx.TraceQueryEndData) {
	if t.query != nil {
		t.query.TraceQueryEnd(ctx, conn, data)
	}
}

// TraceBatchStart implements pgx.BatchTracer by forwarding to the wrapped tracer.
func (t *AcquireTracer) TraceBatchStart(ctx context.Context, conn *pgx.Conn, data pgx.TraceBatchStartData) context.Context {
	if t.batch != nil {
		return t.batch.TraceBatchStart(ctx, conn, data)
	}
	return ctx
}

// TraceBatchQuery implements pgx.BatchTracer by forwarding to the wrapped tracer.
func (t *AcquireTracer) TraceBatchQuery(ctx context.Context, conn *pgx.Conn, data pgx.TraceBatchQueryData) {
	if t.batch != nil {
		t.batch.TraceBatchQuery(ctx, conn, data)
	}
}

// TraceBatchEnd implements pgx.BatchTracer by forwarding to the wrapped tracer.
func (t *AcquireTracer) TraceBatchEnd(ctx context.Context, conn *pgx.Conn, data pgx.TraceBatchEndData) {
	if t.batch != nil {
		t.batch.TraceBatchEnd(ctx, conn, data)
	}
}

// TraceCopyFromStart implements pgx.CopyFromTracer by forwarding to the wrapped tracer.
func (t *AcquireTracer) TraceCopyFromStart(ctx context.Context, conn *pgx.Conn, data pgx.TraceCopyFromStartData) context.Context {
	if t.copyFrom != nil {
		return t.copyFrom.TraceCopyFromStart(ctx, conn, data)
	}
	return ctx
}

// TraceCopyFromEnd implements pgx.CopyFromTracer by forwarding to the wrapped tracer.
func (t *AcquireTracer) TraceCopyFromEnd(ctx context.Context, conn *pgx.Conn, data pgx.TraceCopyFromEndData) {
	if t.copyFrom != nil {
		t.copyFrom.TraceCopyFromEnd(ctx, conn, data)
	}
}

// TracePrepareStart implements pgx.PrepareTracer by forwarding to the wrapped tracer.
func (t *AcquireTracer) TracePrepareStart(ctx context.Context, conn *pgx.Conn, data pgx.TracePrepareStartData) context.Context {
	if t.prepare != nil {
		return t.prepare.TracePrepareStart(ctx, conn, data)
	}
	return ctx
}

// TracePrepareEnd implements pgx.PrepareTracer by forwarding to the wrapped tracer.
func (t *AcquireTracer) TracePrepareEnd(ctx context.Context, conn *pgx.Conn, data pgx.TracePrepareEndData) {
	if t.prepare != nil {
		t.prepare.TracePrepareEnd(ctx, conn, data)
	}
}
