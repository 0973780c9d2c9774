"""The example service (examples/fastapi) with one route more, for e2e/fastapi_test.go's check
of leak detection: run `leaky:app` instead of `app.main:app`.

The route is the pool tuning guide's "Bad: Potential idle-in-transaction" example, and then,
as the guide's comment there says, an exception occurs. An error handler keeps the last
errors with their tracebacks, as error reporters and buffered log handlers do (a logging
MemoryHandler's records hold exc_info), and with each the failed request's frame and the
session in it: the connection stays checked out, idle in a transaction.

Without that, the leak is brief: Starlette drops the traceback once the error is answered, and
CPython's garbage collector finds the session within about a second, whereupon SQLAlchemy
terminates its connection with a warning ("The garbage collector is trying to clean up
non-checked-in connection").
"""

import collections
import os

from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.database import AsyncSessionLocal
from app.main import app

recent_errors = collections.deque(maxlen=10)


class RequestFailed(Exception):
    pass


@app.exception_handler(RequestFailed)
async def keep_error(request: Request, exc: RequestFailed) -> JSONResponse:
    # Starlette sets exc.__traceback__ to None after this handler answers.
    recent_errors.append((exc, exc.__traceback__))
    return JSONResponse({"pid": os.getpid(), "detail": str(exc)}, status_code=500)


@app.get("/bad/idle-in-transaction")
async def idle_in_transaction() -> dict:
    query = text("SELECT 1")
    # Bad: Potential idle-in-transaction
    session = AsyncSessionLocal()
    result = await session.execute(query)  # noqa: F841
    # If exception occurs, connection stays in transaction
    raise RequestFailed("the request failed after its query")
