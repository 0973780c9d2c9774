"""The HTTP service: run it with `uvicorn app.main:app --workers 4` or under gunicorn with
uvicorn's worker class (gunicorn.conf.py)."""

import os
from contextlib import asynccontextmanager
from typing import Annotated

import dbpool_stats
from fastapi import FastAPI, Query, Response
from sqlalchemy import text

from .config import settings
from .database import AsyncSessionLocal, check_pool_status, engine, safe_db_operation

# The longest a /work request may hold its connection.
MAX_SLEEP_SECONDS = 10.0


@asynccontextmanager
async def lifespan(app: FastAPI):
    yield
    await engine.dispose()


app = FastAPI(title=settings.app_name, lifespan=lifespan)


@app.get("/work")
async def work(sleep: Annotated[float, Query(ge=0, le=MAX_SLEEP_SECONDS)] = 0.0) -> dict:
    """One request's database work: check a connection out and hold it for `sleep` seconds
    in a real query. 503 when no connection is free within DB_POOL_TIMEOUT."""

    async def query():
        async with AsyncSessionLocal() as session:
            await session.execute(text("SELECT pg_sleep(:seconds)"), {"seconds": sleep})

    await safe_db_operation(query)
    return {"pid": os.getpid(), "slept": sleep}


@app.get("/pool")
async def pool() -> dict:
    """The pool of the worker process that answers (which one is up to the server)."""
    return await check_pool_status()


@app.get("/healthz", include_in_schema=False)
async def healthz() -> dict:
    return {"pid": os.getpid()}


@app.get("/dbpool", include_in_schema=False)
def dbpool() -> Response:
    return Response(dbpool_stats.render_json(), media_type="application/json")
