"""The `requests` and `feedback` tables.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("created", sa.Double, nullable=False),
        sa.Column("key", sa.String(200)),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200)),
        sa.Column("policy", sa.String(200)),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("cached_tokens", sa.Integer, nullable=False),
        sa.Column("cost_usd", sa.Double, nullable=False),
        sa.Column("latency_ms", sa.Double, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("fallbacks", sa.JSON, nullable=False),
        sa.Column("predicted_quality", sa.Double),
        sa.Column("predicted_cost_usd", sa.Double),
        sa.Column("predicted_latency_ms", sa.Double),
        sa.Column("cost_weight", sa.Double),
        sa.Column("propensity", sa.Double),
        sa.Column("reserved_usd", sa.Double),
        sa.Column("cache", sa.String(32)),
        sa.Column("decision", sa.JSON),
    )
    op.create_index("ix_requests_created", "requests", ["created"])
    op.create_index("ix_requests_key", "requests", ["key"])
    op.create_index("ix_requests_model", "requests", ["model"])
    op.create_table(
        "feedback",
        sa.Column("request_id", sa.String(128), primary_key=True),
        sa.Column("rater", sa.String(200), primary_key=True),
        sa.Column("rating", sa.Double, nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("model", sa.String(200)),
        sa.Column("comment", sa.Text),
        sa.Column("created", sa.Double, nullable=False),
    )
    op.create_index("ix_feedback_created", "feedback", ["created"])


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("requests")
