"""The database: one async engine and its pool per worker process, the AsyncSession factory,
and the pool's own figures."""

import os

import dbpool_stats
from fastapi import HTTPException
from sqlalchemy.exc import TimeoutError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from .config import settings

engine = create_async_engine(
    settings.database_url,
    pool_size=settings.db_pool_size,
    max_overflow=settings.db_max_overflow,
    pool_timeout=settings.db_pool_timeout,
    pool_recycle=settings.db_pool_recycle,
    pool_pre_ping=settings.db_pool_pre_ping,
    echo=settings.db_echo,
    connect_args={"server_settings": {"application_name": settings.app_name}},
)

AsyncSessionLocal = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)

# The pool's statistics for dbpool_exporter; main.py serves them at /dbpool.
dbpool_stats.instrument(engine, name=settings.app_name, multiprocess_dir=settings.dbpool_stats_dir)


async def safe_db_operation(db_operation):
    try:
        return await db_operation()
    except TimeoutError:
        raise HTTPException(
            status_code=503,
            detail="Database unavailable. Please try again."
        )


async def check_pool_status() -> dict:
    """This worker process's pool as SQLAlchemy counts it (overflow is negative until the pool
    has opened pool_size connections)."""
    pool = engine.pool
    return {
        "pid": os.getpid(),
        "pool_size": pool.size(),
        "checked_out": pool.checkedout(),
        "checked_in": pool.checkedin(),
        "overflow": pool.overflow(),
        "total_connections": pool.size() + pool.overflow(),
    }
