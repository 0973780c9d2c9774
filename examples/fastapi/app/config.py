"""The service's settings: the environment, else a .env file in the working directory, else the
defaults (DB_POOL_SIZE 10, DB_MAX_OVERFLOW 20, DB_POOL_TIMEOUT 30, DB_POOL_RECYCLE 3600,
DB_POOL_PRE_PING true, DB_ECHO false). A bad value stops the start with pydantic's message,
which names the variable and the value."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # postgresql+asyncpg://user:password@host:5432/database
    database_url: str
    # The pool's name in dbpool_stats' document and the connections' application_name, so
    # that dbpool_exporter can tell this service's backends apart in pg_stat_activity.
    app_name: str = "api"

    db_pool_size: int = Field(10, ge=1)
    db_max_overflow: int = Field(20, ge=0)
    db_pool_timeout: float = Field(30, gt=0)
    db_pool_recycle: int = 3600
    db_pool_pre_ping: bool = True
    db_echo: bool = False

    # The directory that the worker processes of one host share for their pool statistics
    # (gunicorn -w, uvicorn --workers); unset for a single process. $DBPOOL_STATS_DIR also works.
    dbpool_stats_dir: str | None = None


settings = Settings()
