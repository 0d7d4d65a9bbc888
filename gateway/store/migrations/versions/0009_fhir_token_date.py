"""fhir_token_date: a token and a date parameter indexed together, filled from the existing index rows

Revision ID: 0009
Revises: 0008

"Observation?code=X&date=ge..&date=lt.." was the intersection of two large index sets (every Observation with
the code, every Observation in the period); one row per (coding, date) pair makes it one bounded index range.
The pairs are those of ``[_token_date]`` in search_parameters.toml when this revision was written; their rows
are built here from the token and date rows already indexed, so no resource needs reparsing.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_PAIRS = [("Observation", "code", "date"), ("DiagnosticReport", "code", "date"), ("Procedure", "code", "date")]


def upgrade() -> None:
    op.create_table(
        "fhir_token_date",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("res_pk", sa.Integer(), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=129), nullable=False),
        sa.Column("system", sa.String(length=255), nullable=True),
        sa.Column("code", sa.String(length=255), nullable=True),
        sa.Column("low", sa.String(length=26), nullable=False),
        sa.Column("high", sa.String(length=26), nullable=False),
        sa.Column("wide", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["res_pk"], ["fhir_resource.pk"]),
        sa.PrimaryKeyConstraint("id"),
    )
    for res_type, token_param, date_param in _PAIRS:
        op.execute(sa.text(
            "INSERT INTO fhir_token_date (res_pk, res_type, param, system, code, low, high, wide) "
            "SELECT t.res_pk, t.res_type, :pair, t.system, t.code, d.low, d.high, d.wide "
            "FROM fhir_token t JOIN fhir_date d ON d.res_pk = t.res_pk AND d.res_type = t.res_type "
            "AND d.param = :date_param WHERE t.res_type = :res_type AND t.param = :token_param"
        ).bindparams(pair=f"{token_param}+{date_param}", date_param=date_param, res_type=res_type,
                     token_param=token_param))
    op.create_index("ix_fhir_token_date_res_pk", "fhir_token_date", ["res_pk"])
    op.create_index("ix_fhir_token_date_code", "fhir_token_date",
                    ["res_type", "param", "code", "wide", "low", "high", "system", "res_pk"])


def downgrade() -> None:
    op.drop_index("ix_fhir_token_date_code", table_name="fhir_token_date")
    op.drop_index("ix_fhir_token_date_res_pk", table_name="fhir_token_date")
    op.drop_table("fhir_token_date")
