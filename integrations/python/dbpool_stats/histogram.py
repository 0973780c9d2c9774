"""Cumulative histograms of durations, with the bucket bounds that the JSON contract fixes.

A Histogram is a preallocated list of counts, one per bound plus one above the largest, and a
sum. The hot path in stats.py updates them in place (``counts[bisect_left(bounds, d)] += 1;
h.sum += d``) without a lock; see stats.py for why that is safe under the GIL. read()
turns them into the document's cumulative form.
"""

from bisect import bisect_left

#: Checkout time (wait for a connection), seconds. The exporter's Go histogram uses the same
#: bounds; a checkout that took longer than the largest is counted only in "count" (+Inf).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

#: Hold time (checkout to checkin), seconds. Web requests hold a connection for one to a few
#: hundred milliseconds, transactions of batch work for seconds; 1 ms is the floor where the
#: hold stops mattering for sizing (1000 checkouts/s x 1 ms is one connection). The same 1-2.5-5
#: steps as BUCKETS, so the two line up bucket by bucket where they overlap, up to 60 s: a
#: longer hold is a batch job or a leak, which the leak report names with its site.
USE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

#: Opening a connection (the driver's connect: TCP, TLS, authentication, plus SQLAlchemy's
#: setup of the new connection), seconds. A login over a local socket takes 1-10 ms (SCRAM
#: hashing), across a network with TLS 10-100 ms; a refused connect fails in well under 1 ms and
#: lands in the first bucket. The top bounds reach the drivers' connect timeouts (libpq's
#: connect_timeout is often 10-30 s, asyncpg's default timeout is 60 s), so that logins that
#: time out stand apart from slow ones.
CREATE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Histogram:
    """Counts per bucket (the last slot: above the largest bound) and the sum, in seconds."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds):
        """For the cold paths; the hot path inlines the same two lines."""
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def reset(self):
        """Zero in place: the hot path's closures hold this object and its counts list."""
        self.counts[:] = [0] * len(self.counts)
        self.sum = 0.0

    def read(self):
        """(count, sum_seconds, cumulative buckets as the document has them)."""
        raw = list(self.counts)  # one C-level copy: consistent with itself
        total = self.sum
        buckets = []
        cum = 0
        for le, n in zip(self.bounds, raw):
            cum += n
            buckets.append({"le": le, "count": cum})
        return cum + raw[-1], total, buckets
