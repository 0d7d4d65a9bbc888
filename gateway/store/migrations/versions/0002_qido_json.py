"""study and series: precomputed default QIDO-RS return attributes (qido_json)

Revision ID: 0002
Revises: 0001
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BATCH = 2000


def _backfill(table: str) -> None:
    # Computed with the code of this revision's time, so the migration gives what ingest would have stored.
    from gateway.dicom.index_fields import series_qido_members, study_qido_members

    members = study_qido_members if table == "study" else series_qido_members
    connection = op.get_bind()
    last = 0
    while True:
        rows = connection.execute(sa.text(f"SELECT pk, attributes_json FROM {table} WHERE pk > :last "
                                          f"ORDER BY pk LIMIT {BATCH}"), {"last": last}).all()
        if not rows:
            return
        connection.execute(sa.text(f"UPDATE {table} SET qido_json = :value WHERE pk = :pk"),
                           [{"pk": pk, "value": members(json.loads(text or "{}"))} for pk, text in rows])
        last = rows[-1][0]


def upgrade() -> None:
    for table in ("study", "series"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("qido_json", sa.Text(), nullable=False, server_default=""))
        _backfill(table)


def downgrade() -> None:
    for table in ("study", "series"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("qido_json")
