"""The ledger's two tables (SQLAlchemy Core). Migrations in `migrations/versions` create them.

`requests`: one row per request record, keyed by the response id (`id`). `feedback`: one row per
(request, rater), the rater's latest rating. There is no foreign key between them: a record and
its ratings arrive through different streams and may be written in either order.
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, Double, Integer, MetaData, String, Table, Text

metadata = MetaData()

requests = Table(
    "requests",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("created", Double, nullable=False, index=True),  # unix seconds
    Column("key", String(200), index=True),  # API key name; NULL without keys
    Column("owner", String(200), nullable=False),
    Column("model", String(200), index=True),  # NULL when every model failed
    Column("policy", String(200)),  # NULL when the caller named a model
    Column("prompt", Text, nullable=False),  # as config `log.prompts` keeps it
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("cached_tokens", Integer, nullable=False),
    Column("cost_usd", Double, nullable=False),
    Column("latency_ms", Double, nullable=False),
    Column("status", String(32), nullable=False),  # ok | error | client_closed
    Column("error", Text),
    Column("fallbacks", JSON, nullable=False),
    Column("predicted_quality", Double),
    Column("predicted_cost_usd", Double),
    Column("predicted_latency_ms", Double),
    Column("cost_weight", Double),
    Column("propensity", Double),
    Column("reserved_usd", Double),
    Column("cache", String(32)),  # exact | semantic
    Column("decision", JSON(none_as_null=True)),  # {"ranked": [...], "excluded": [...]} for routed requests
)

feedback = Table(
    "feedback",
    metadata,
    Column("request_id", String(128), primary_key=True),
    Column("rater", String(200), primary_key=True),
    Column("rating", Double, nullable=False),
    Column("source", String(32), nullable=False),  # user | judge
    Column("model", String(200)),
    Column("comment", Text),
    Column("created", Double, nullable=False, index=True),
)
