# gunicorn -c gunicorn.conf.py -w 4 --max-requests 1000 app.main:app
# Workers are uvicorn's, in separate processes that share the pool statistics directory
# (DBPOOL_STATS_DIR, or the setting of the same name in .env).
worker_class = "uvicorn_worker.UvicornWorker"


def child_exit(server, worker):
    # A worker that exits normally leaves its final figures itself. One that died (SIGKILL,
    # out of memory) left the figures it last wrote: mark them final now rather than when a
    # sibling notices, so that they are served as those of a process that exited.
    import dbpool_stats
    from app.config import settings

    dbpool_stats.mark_process_dead(worker.pid, settings.dbpool_stats_dir)
