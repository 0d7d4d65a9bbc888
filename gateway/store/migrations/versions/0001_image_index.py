"""image index: patient, study, series, instance

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 01:56:32.837970
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    op.create_table('patient',
    sa.Column('pk', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('issuer', sa.String(length=64), nullable=False),
    sa.Column('patient_name', sa.Text(), nullable=False),
    sa.Column('patient_name_match', sa.Text(), nullable=False),
    sa.Column('patient_birth_date', sa.String(length=8), nullable=False),
    sa.Column('patient_sex', sa.String(length=16), nullable=False),
    sa.Column('num_studies', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('pk'),
    sa.UniqueConstraint('patient_id', 'issuer', name='uq_patient_identity')
    )
    with op.batch_alter_table('patient', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_patient_patient_name_match'), ['patient_name_match'], unique=False)

    op.create_table('study',
    sa.Column('pk', sa.Integer(), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('patient_pk', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('issuer', sa.String(length=64), nullable=False),
    sa.Column('patient_name', sa.Text(), nullable=False),
    sa.Column('patient_name_match', sa.Text(), nullable=False),
    sa.Column('patient_name_fuzzy', sa.Text(), nullable=False),
    sa.Column('patient_birth_date', sa.String(length=8), nullable=False),
    sa.Column('patient_sex', sa.String(length=16), nullable=False),
    sa.Column('study_date', sa.String(length=8), nullable=False),
    sa.Column('study_time', sa.String(length=13), nullable=False),
    sa.Column('accession_number', sa.String(length=64), nullable=False),
    sa.Column('study_id', sa.String(length=64), nullable=False),
    sa.Column('study_description', sa.Text(), nullable=False),
    sa.Column('referring_physician_match', sa.Text(), nullable=False),
    sa.Column('modalities', sa.String(length=255), nullable=False),
    sa.Column('num_series', sa.Integer(), nullable=False),
    sa.Column('num_instances', sa.Integer(), nullable=False),
    sa.Column('attributes_json', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['patient_pk'], ['patient.pk'], ),
    sa.PrimaryKeyConstraint('pk'),
    sa.UniqueConstraint('study_instance_uid')
    )
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.create_index('ix_study_accession', ['accession_number'], unique=False)
        batch_op.create_index('ix_study_date_time', ['study_date', 'study_time'], unique=False)
        batch_op.create_index('ix_study_name_match', ['patient_name_match'], unique=False)
        batch_op.create_index('ix_study_patient_id', ['patient_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_patient_pk'), ['patient_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_updated_at'), ['updated_at'], unique=False)

    op.create_table('series',
    sa.Column('pk', sa.Integer(), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('study_pk', sa.Integer(), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('series_number', sa.Integer(), nullable=True),
    sa.Column('series_description', sa.Text(), nullable=False),
    sa.Column('body_part_examined', sa.String(length=64), nullable=False),
    sa.Column('series_date', sa.String(length=8), nullable=False),
    sa.Column('pps_start_date', sa.String(length=8), nullable=False),
    sa.Column('pps_start_time', sa.String(length=13), nullable=False),
    sa.Column('num_instances', sa.Integer(), nullable=False),
    sa.Column('attributes_json', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['study_pk'], ['study.pk'], ),
    sa.PrimaryKeyConstraint('pk'),
    sa.UniqueConstraint('series_instance_uid')
    )
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_series_modality'), ['modality'], unique=False)
        batch_op.create_index('ix_series_study_number', ['study_pk', 'series_number'], unique=False)

    op.create_table('study_modality',
    sa.Column('study_pk', sa.Integer(), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.ForeignKeyConstraint(['study_pk'], ['study.pk'], ),
    sa.PrimaryKeyConstraint('study_pk', 'modality')
    )
    with op.batch_alter_table('study_modality', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_study_modality_modality'), ['modality'], unique=False)

    op.create_table('instance',
    sa.Column('pk', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('series_pk', sa.Integer(), nullable=False),
    sa.Column('study_pk', sa.Integer(), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('instance_number', sa.Integer(), nullable=True),
    sa.Column('rows', sa.Integer(), nullable=True),
    sa.Column('columns', sa.Integer(), nullable=True),
    sa.Column('bits_allocated', sa.Integer(), nullable=True),
    sa.Column('number_of_frames', sa.Integer(), nullable=True),
    sa.Column('transfer_syntax_uid', sa.String(length=64), nullable=False),
    sa.Column('file_path', sa.Text(), nullable=False),
    sa.Column('file_size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('metadata_json', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['series_pk'], ['series.pk'], ),
    sa.ForeignKeyConstraint(['study_pk'], ['study.pk'], ),
    sa.PrimaryKeyConstraint('pk'),
    sa.UniqueConstraint('sop_instance_uid')
    )
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.create_index('ix_instance_series_number', ['series_pk', 'instance_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_instance_sop_class_uid'), ['sop_class_uid'], unique=False)
        batch_op.create_index(batch_op.f('ix_instance_study_pk'), ['study_pk'], unique=False)

    


def downgrade() -> None:
    
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instance_study_pk'))
        batch_op.drop_index(batch_op.f('ix_instance_sop_class_uid'))
        batch_op.drop_index('ix_instance_series_number')

    op.drop_table('instance')
    with op.batch_alter_table('study_modality', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_modality_modality'))

    op.drop_table('study_modality')
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index('ix_series_study_number')
        batch_op.drop_index(batch_op.f('ix_series_modality'))

    op.drop_table('series')
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_updated_at'))
        batch_op.drop_index(batch_op.f('ix_study_patient_pk'))
        batch_op.drop_index('ix_study_patient_id')
        batch_op.drop_index('ix_study_name_match')
        batch_op.drop_index('ix_study_date_time')
        batch_op.drop_index('ix_study_accession')

    op.drop_table('study')
    with op.batch_alter_table('patient', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_patient_patient_name_match'))

    op.drop_table('patient')
    
